"""Row indices of a split's cells per (context, perturbation, label), built once.

Every per-key loop (predicting, scoring, fitting baselines, training effects) asks "which rows
are the controls of this context" and "which rows are the cells of this perturbation in this
context with this label". Scanning every cell's labels for each question costs O(cells) per
key: ~0.4 s at 2M cells, hours with thousands of held-out keys. :class:`KeyRowIndex` answers
both from one grouping of the cells (a stable sort of integer codes, O(cells log cells) once),
and every lookup afterwards is a dictionary access.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

_EMPTY = np.zeros(0, dtype=np.int64)


def _groups(codes: np.ndarray, n_groups: int) -> list[np.ndarray]:
    """Rows of each code ``0..n_groups-1`` (ascending rows), negative codes left out."""
    keep = np.flatnonzero(codes >= 0)
    order = keep[np.argsort(codes[keep], kind="stable")]
    bounds = np.searchsorted(codes[order], np.arange(n_groups + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(n_groups)]


@dataclass(frozen=True)
class KeyRowIndex:
    """The rows of each control context and of each (context, perturbation, label) key.

    Attributes:
        n_cells: Number of cells indexed.
        controls: Rows of every control cell of each context, whatever its label.
        perturbed: Rows of the perturbed cells of each ``(context, perturbation, label)``.
    """

    n_cells: int
    controls: dict[str, np.ndarray]
    perturbed: dict[tuple[str, str, str], np.ndarray]

    @classmethod
    def build(
        cls,
        context: pd.Series | np.ndarray,
        perturbation: pd.Series | np.ndarray,
        is_control: pd.Series | np.ndarray,
        label: pd.Series | np.ndarray,
    ) -> KeyRowIndex:
        """Group the cells once.

        Args:
            context: Context of each cell (``dataset.celltype``).
            perturbation: Perturbation label of each cell.
            is_control: Whether each cell is a control.
            label: Split label of each cell (``train``/``val``/``test``/``unused``).
        """
        is_control = np.asarray(is_control, dtype=bool)
        n = len(is_control)
        ctx_codes, ctx_names = pd.factorize(np.asarray(context), sort=True)
        control_codes = np.where(is_control, ctx_codes, -1)
        controls = {
            str(name): rows
            for name, rows in zip(ctx_names, _groups(control_codes, len(ctx_names)), strict=True)
        }
        keys = pd.MultiIndex.from_arrays(
            [np.asarray(context), np.asarray(perturbation), np.asarray(label)]
        )
        key_codes, key_names = keys.factorize(sort=True)
        key_codes = np.where(is_control, -1, key_codes)
        perturbed = {
            (str(c), str(p), str(lab)): rows
            for (c, p, lab), rows in zip(key_names, _groups(key_codes, len(key_names)), strict=True)
            if len(rows)
        }
        return cls(n_cells=n, controls=controls, perturbed=perturbed)

    def control_rows(self, context: str) -> np.ndarray:
        """Rows of the control cells of ``context`` (empty when it has none)."""
        return self.controls.get(context, _EMPTY)

    def perturbation_rows(self, context: str, perturbation: str, label: str) -> np.ndarray:
        """Rows of one perturbation's cells in one context with one label (may be empty)."""
        return self.perturbed.get((context, perturbation, label), _EMPTY)

    def keys(self, label: str) -> Iterator[tuple[str, str]]:
        """``(context, perturbation)`` of every perturbed key with ``label``, sorted."""
        return ((c, p) for c, p, lab in sorted(self.perturbed) if lab == label)

    def heldout_contexts(self, label: str) -> list[str]:
        """Contexts that have perturbed cells labelled ``label`` (sorted)."""
        return sorted({c for c, _ in self.keys(label)})

    def heldout_perturbations(self, context: str, label: str) -> list[str]:
        """Perturbations of ``context`` whose cells are labelled ``label`` (sorted)."""
        return sorted(p for c, p in self.keys(label) if c == context)
