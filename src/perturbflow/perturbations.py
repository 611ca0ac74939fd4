"""Parsing perturbation labels into their components.

Combinations are written ``A+B`` (as in PerturBench and Norman et al. 2019); a single
perturbation is a combination of one.
"""

from __future__ import annotations

COMBINATION_SEP = "+"


def components(label: str, *, sep: str = COMBINATION_SEP) -> tuple[str, ...]:
    """Split a perturbation label into its components, in order, blanks dropped.

    Args:
        label: A perturbation label such as ``"KLF1+MAP2K6"``.
        sep: The combination separator.

    Returns:
        The components, e.g. ``("KLF1", "MAP2K6")``; ``("KLF1",)`` for a single.
    """
    return tuple(part.strip() for part in str(label).split(sep) if part.strip())
