"""What the training perturbations do: the mean delta of every training key.

:class:`TrainingEffects` holds, per ``(context, perturbation)`` of the split's training
cells, its mean expression minus its context's control mean; the baselines, the linear
model's evidence and the ST model's prior and inputs all start from it. Means are taken in
blocks of rows (:func:`group_means`), so an on-disk matrix is never read whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from perturbflow.exceptions import InputError
from perturbflow.loading.row_matrix import RowMatrix, row_blocks
from perturbflow.splits.data import SplitCells


@dataclass(frozen=True)
class TrainingEffects:
    """Mean effects learned from the training cells of one split.

    Attributes:
        keys: ``(context, perturbation)`` of each row of ``deltas``.
        deltas: Mean perturbed expression minus the context's training-control mean,
            one row per training (context, perturbation), genes in columns.
        n_cells: Number of training cells behind each row.
        control_means: Training-control mean expression per context.
    """

    keys: list[tuple[str, str]]
    deltas: np.ndarray
    n_cells: np.ndarray
    control_means: dict[str, np.ndarray]

    def index(self) -> dict[tuple[str, str], int]:
        """Map ``(context, perturbation)`` to its row in ``deltas``."""
        return {k: i for i, k in enumerate(self.keys)}

    def contexts(self) -> list[str]:
        """Contexts with at least one training perturbation (sorted)."""
        return sorted({c for c, _ in self.keys})

    def mean_delta(self, context: str | None = None) -> np.ndarray:
        """Mean training delta over perturbations: of ``context`` when it has any, else all.

        This is the ``perturbation_mean`` effect of cell-eval and the Virtual Cell
        Challenge: every perturbation is predicted to shift its context by the average
        shift of the training perturbations.
        """
        rows = [i for i, (c, _) in enumerate(self.keys) if c == context]
        if not rows:
            rows = list(range(len(self.keys)))
        return self.deltas[rows].mean(axis=0)


def group_means(
    X: np.ndarray | RowMatrix, labels: np.ndarray, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean rows of ``X`` per label, in bounded blocks of rows.

    Args:
        X: Cells x genes (a dense array or a :class:`RowMatrix`).
        labels: One label per row of ``X``, or per entry of ``rows`` when given.
        rows: The rows of ``X`` to average (default: all).

    Returns:
        The distinct labels (sorted), the mean rows (labels x genes, float64) and counts.
    """
    uniques, codes = np.unique(labels, return_inverse=True)
    counts = np.bincount(codes, minlength=len(uniques))
    sums = np.zeros((len(uniques), X.shape[1]), dtype=np.float64)
    start = 0
    for block, values in row_blocks(X, rows):
        block_codes = codes[start : start + len(block)]
        start += len(block)
        # a sparse indicator product sums each label's rows of the block in one call
        indicator = sp.csr_matrix(
            (np.ones(len(block), dtype=np.float64), (block_codes, np.arange(len(block)))),
            shape=(len(uniques), len(block)),
        )
        sums += indicator @ values.astype(np.float64, copy=False)
    return uniques, sums / np.maximum(counts, 1)[:, None], counts


def training_effects(data: SplitCells) -> TrainingEffects:
    """Compute training-control means and training deltas of one split.

    Args:
        data: Expression and labels of the split.

    Returns:
        The training effects.

    Raises:
        InputError: If no training perturbation has a training control in its context.
    """
    c = data.cells
    train = (c["split"] == "train").to_numpy()
    ctrl_rows = train & c["is_control"].to_numpy()
    ctx_labels, ctx_means, _ = group_means(
        data.X, c["context"].to_numpy()[ctrl_rows], np.flatnonzero(ctrl_rows)
    )
    control_means = {str(k): m for k, m in zip(ctx_labels, ctx_means, strict=True)}

    pert_rows = train & ~c["is_control"].to_numpy()
    sub = c.loc[pert_rows, ["context", "perturbation"]]
    labels = (sub["context"] + "\x1f" + sub["perturbation"]).to_numpy()
    uniques, means, counts = group_means(data.X, labels, np.flatnonzero(pert_rows))
    keys, deltas, n_cells = [], [], []
    for label, mean, n in zip(uniques, means, counts, strict=True):
        context, perturbation = str(label).split("\x1f")
        if context not in control_means:
            continue  # no training control in this context: its effect is undefined
        keys.append((context, perturbation))
        deltas.append(mean - control_means[context])
        n_cells.append(int(n))
    if not keys:
        raise InputError(
            f"Split {data.split_name!r}: no training perturbation has training control cells "
            "in its context, so no effect can be learned."
        )
    return TrainingEffects(
        keys=keys,
        deltas=np.vstack(deltas).astype(np.float64),
        n_cells=np.asarray(n_cells),
        control_means=control_means,
    )
