"""Error-message formatting shared by the feature, category and encoder modules."""

from __future__ import annotations

from collections.abc import Sequence

from perturbflow.exceptions import closest

MAX_LISTED = 10  # how many offending values an error message lists


def listed(values: Sequence[str]) -> str:
    """Format a list of offending values, ``MAX_LISTED`` at most."""
    more = f" and {len(values) - MAX_LISTED} more" if len(values) > MAX_LISTED else ""
    return ", ".join(repr(v) for v in values[:MAX_LISTED]) + more


def near(values: Sequence[str], known: Sequence[str]) -> str:
    """A hint naming the known values close to each of the first offending ``values``."""
    hints = {v: closest(v, known) for v in values[:MAX_LISTED]}
    close = "; ".join(f"{v!r} ~ {', '.join(map(repr, h))}" for v, h in hints.items() if h)
    return f" Close known values: {close}." if close else ""
