"""Counted nouns in the right number: ``1 scenario``, ``2 scenarios``."""

from __future__ import annotations


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 run``, ``2 runs``, ``1,000 runs``; ``words`` for an irregular plural."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"
