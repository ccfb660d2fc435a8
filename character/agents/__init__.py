"""Agents from their own words (seed 002): one model per person, trained on what they said, then tested on how
well it thinks and votes like them."""
