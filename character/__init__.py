"""Character Studio: character training (Open Character Training recipe) as a library and CLI."""

__version__ = "0.1.0"
