"""Counts in the lines otelproc writes: "1 process", "2 processes", never "1 processes"."""

from __future__ import annotations


def count(n: int, noun: str) -> str:
    """n and the noun, plural unless n is 1 (-es after s, sh, ch and x, as in "processes")."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun}{'es' if noun.endswith(('s', 'sh', 'ch', 'x')) else 's'}"
