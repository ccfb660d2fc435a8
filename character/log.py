"""Progress and messages go through one logger, `character`, formatted here: a plain line on stderr, so that a
command's own output (tables, summaries, the files it wrote) stays alone on stdout for pipes. `print` is only
for that output. Library code calls `say` (or `logger.warning`); the CLI calls `setup` once."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("character")


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message comes (pytest and the studio's jobs replace it)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup(level: int = logging.INFO) -> None:
    """Show messages at `level` and above as plain lines on stderr; calling it again changes only the level."""
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)


def say(message: str) -> None:
    """A progress line (`[dpo] running ...`)."""
    logger.info(message)
