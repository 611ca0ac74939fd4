"""Seurat HVGs of a matrix streamed by blocks of rows: per-gene moments, then the selection.

The out-of-core preprocessing (:mod:`perturbflow.preprocess.stream`) never holds the matrix:
it adds each written block's ``expm1`` sums to :class:`GeneMoments`, and
:func:`hvgs_from_moments` selects the same genes as :func:`~perturbflow.preprocess.hvg.select_hvg`
would on the whole matrix (scanpy's seurat statistics from the moments).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.exceptions import InputError
from perturbflow.preprocess.hvg import (
    STAT_COLUMNS,
    cap_n_top_genes,
    exactly_n,
    seurat_statistics,
)


@dataclass
class GeneMoments:
    """Per-gene sums of ``expm1(X)`` and of its square over the written cells."""

    total: np.ndarray
    squares: np.ndarray
    nonzero: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int = 0

    @classmethod
    def zeros(cls, n_genes: int) -> GeneMoments:
        """Empty sums for ``n_genes`` genes."""
        return cls(
            np.zeros(n_genes), np.zeros(n_genes), np.zeros(n_genes, dtype=np.int64),
            np.full(n_genes, np.inf), np.full(n_genes, -np.inf),
        )  # fmt: skip

    def add(self, block: sp.csr_matrix) -> None:
        """Add the rows of a log1p block."""
        block = block.copy()
        block.data = np.expm1(block.data)  # float32, as scanpy's seurat flavour does
        values = block.data.astype(np.float64)
        self.total += np.bincount(block.indices, weights=values, minlength=len(self.total))
        self.squares += np.bincount(block.indices, weights=values**2, minlength=len(self.total))
        stored = block.data != 0
        self.nonzero += np.bincount(block.indices[stored], minlength=len(self.total))
        np.minimum.at(self.low, block.indices[stored], block.data[stored])
        np.maximum.at(self.high, block.indices[stored], block.data[stored])
        self.n += block.shape[0]

    def constant(self) -> np.ndarray:
        """Genes with one value in every cell (all zero, or equal and never zero)."""
        return (self.nonzero == 0) | ((self.nonzero == self.n) & (self.low == self.high))

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance (``ddof=1``) per gene."""
        mean = self.total / self.n
        var = (self.squares / self.n - mean**2) * self.n / max(self.n - 1, 1)
        return mean, np.maximum(var, 0.0)


def hvgs_from_moments(
    moments: GeneMoments, var: pd.DataFrame, n_top_genes: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """The HVG columns (ascending) and ``var`` annotated as :func:`select_hvg` does."""
    varying = ~moments.constant()
    if not varying.any():
        raise InputError("select_hvg: every gene is constant across cells; nothing varies.")
    n = cap_n_top_genes(n_top_genes, len(var), int(varying.sum()))
    mean, variance = moments.mean_var()
    stats = seurat_statistics(mean[varying], variance[varying], n)
    stats.index = var.index[varying]
    chosen = exactly_n(stats, n)
    annotated = var.copy()
    highly_variable = pd.Series(False, index=var.index)
    highly_variable[stats.index[chosen]] = True
    annotated["highly_variable"] = highly_variable.to_numpy()
    for col in STAT_COLUMNS:
        annotated[col] = stats[col].reindex(var.index).to_numpy(dtype=np.float64)
    return annotated, np.flatnonzero(annotated["highly_variable"].to_numpy())
