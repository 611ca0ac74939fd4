"""Errors raised for bad user input.

Every check that runs before long work raises :class:`InputError` (a ``ValueError``)
with a message that names the file, column or value at fault and what was expected.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InputError(ValueError):
    """Bad input (data, configuration or parameters) detected before long work starts."""


def closest(value: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` entries of ``choices`` closest to ``value`` (case-insensitive).

    Args:
        value: The value that was not found.
        choices: The values that exist.
        n: How many suggestions to return at most.

    Returns:
        The closest choices, best first; may be empty.
    """
    choices = [str(c) for c in choices]
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(str(value).lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


def suggest(value: str, choices: Iterable[str]) -> str:
    """Format a "did you mean" hint for ``value`` (empty string when nothing is close)."""
    hits = closest(value, choices)
    return f" Did you mean {', '.join(repr(h) for h in hits)}?" if hits else ""
