"""The expression matrix, split labels and training effects that every predictor reads.

A *context* is a (dataset, cell type) pair, written ``"dataset.celltype"`` as in STATE's
TOML files. A perturbation's *effect* (delta) in a context is the mean expression of its
cells minus the mean of that context's control cells. Everything a baseline learns comes
from cells labelled ``train`` in the split; held-out (``val``/``test``) cells are only
read to build the real side of an evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.exceptions import InputError
from perturbflow.loading.h5reader import H5RowReader
from perturbflow.loading.row_matrix import RowMatrix, row_blocks
from perturbflow.splits.rows import KeyRowIndex

CONTEXT_SEP = "."


def context_key(dataset: str, celltype: str) -> str:
    """Return the ``"dataset.celltype"`` key of a context."""
    return f"{dataset}{CONTEXT_SEP}{celltype}"


@dataclass(frozen=True)
class EvaluationData:
    """Dense expression of every cell plus its design labels for one named split.

    Attributes:
        X: Expression, cells x genes, float32 (the model's gene space, e.g. ``X_hvg``): a
            dense array, or a :class:`~perturbflow.loading.row_matrix.RowMatrix` read by
            rows (a sparse matrix, or a matrix of the h5ad file on disk).
        genes: Gene names of the columns of ``X``.
        cells: Per-cell table indexed like the AnnData, with columns ``dataset``,
            ``celltype``, ``context``, ``perturbation``, ``is_control`` and ``split``
            (``train``/``val``/``test``/``unused``).
        split_name: The named split these labels come from.
    """

    X: np.ndarray | RowMatrix
    genes: list[str]
    cells: pd.DataFrame
    split_name: str

    @cached_property
    def rows(self) -> KeyRowIndex:
        """The per-key row index of the cells, built once on first use (a groupby)."""
        c = self.cells
        return KeyRowIndex.build(c["context"], c["perturbation"], c["is_control"], c["split"])

    @cached_property
    def context_parts(self) -> dict[str, tuple[str, str]]:
        """``(dataset, celltype)`` of each context."""
        parts = self.cells[["context", "dataset", "celltype"]].drop_duplicates("context")
        return {str(c): (str(d), str(t)) for c, d, t in parts.itertuples(index=False)}

    def heldout_contexts(self, label: str) -> list[str]:
        """Contexts that have perturbed cells labelled ``label`` (sorted)."""
        return self.rows.heldout_contexts(label)

    def heldout_perturbations(self, context: str, label: str) -> list[str]:
        """Perturbations of ``context`` whose cells are labelled ``label`` (sorted)."""
        return self.rows.heldout_perturbations(context, label)

    def control_rows(self, context: str) -> np.ndarray:
        """Row indices of all control cells of ``context``, whatever their split label.

        Controls are the inputs of a prediction for their context: in a few-shot split
        they are training cells, in a zero-shot split they are held out with their
        context; either way they are the cells a prediction starts from.
        """
        return self.rows.control_rows(context)

    def perturbation_rows(self, context: str, perturbation: str, label: str) -> np.ndarray:
        """Row indices of the cells of one perturbation in one context with one label."""
        return self.rows.perturbation_rows(context, perturbation, label)


def evaluation_data(
    adata: ad.AnnData,
    split_table: pd.DataFrame,
    split_name: str,
    *,
    genes: list[str],
    obsm_key: str | None = "X_hvg",
) -> EvaluationData:
    """Assemble :class:`EvaluationData` from a preprocessed AnnData and a split table.

    Args:
        adata: Preprocessed AnnData (log1p), holding ``obsm[obsm_key]`` when set.
        split_table: Per-cell split table with ``dataset``, ``context`` (cell type),
            ``perturbation``, ``is_control`` and one column per named split.
        split_name: Which named split's labels to use.
        genes: Names of the columns of the expression space (the HVG list when
            ``obsm_key`` is ``X_hvg``, else ``adata.var_names``).
        obsm_key: obsm key of the expression space, or ``None`` for ``X``.

    Returns:
        The expression (dense when it is dense in ``adata``, else read by rows) and the
        design labels.

    Raises:
        InputError: If the split or the obsm key is missing, the cells of the table and
            the AnnData differ, or the gene list does not match the matrix width.
    """
    if obsm_key is None:
        matrix = adata.X
    elif obsm_key not in adata.obsm:
        raise InputError(
            f"obsm key {obsm_key!r} is missing from the preprocessed AnnData "
            f"(available: {list(adata.obsm.keys())}); run the preprocessing pipeline first."
        )
    else:
        matrix = adata.obsm[obsm_key]
    return split_design(adata.obs_names, split_table, split_name, genes=genes, matrix=matrix)


def split_design(
    obs_names: pd.Index,
    split_table: pd.DataFrame,
    split_name: str,
    *,
    genes: list[str],
    matrix: Any,
) -> EvaluationData:
    """:class:`EvaluationData` of cells ``obs_names`` (rows of ``matrix``) in one split.

    Args:
        obs_names: The cells, in the matrix's row order.
        split_table: Per-cell split table (see :func:`evaluation_data`).
        split_name: Which named split's labels to use.
        genes: Names of the matrix's columns.
        matrix: The expression: a dense array (kept, as float32), a sparse matrix or an
            :class:`~perturbflow.loading.h5reader.H5RowReader` (read by rows, never
            densified whole).

    Raises:
        InputError: The split is missing, the cells of the table and the matrix differ, or
            the gene list does not match the matrix width.
    """
    if split_name not in split_table.columns:
        raise InputError(
            f"Split {split_name!r} is not in the split table; it has "
            f"{[c for c in split_table.columns if c not in _DESIGN_COLUMNS]}."
        )
    n_cols = matrix.n_cols if isinstance(matrix, H5RowReader) else matrix.shape[1]
    if n_cols != len(genes):
        raise InputError(
            f"The gene list has {len(genes)} names but the expression matrix has {n_cols} columns."
        )
    missing = obs_names.difference(split_table.index)
    if len(missing):
        raise InputError(
            f"{len(missing)} cells of the AnnData are not in the split table "
            f"(e.g. {list(missing[:3])}); rebuild the splits from the same preprocessed data."
        )
    # the split table is built from the same file: in its order, a copy-free view of it
    table = split_table if split_table.index.equals(obs_names) else split_table.loc[obs_names]
    cells = pd.DataFrame(
        {
            "dataset": table["dataset"].astype(str).to_numpy(),
            "celltype": table["context"].astype(str).to_numpy(),
            "perturbation": table["perturbation"].astype(str).to_numpy(),
            "is_control": table["is_control"].astype(bool).to_numpy(),
            "split": table[split_name].astype(str).to_numpy(),
        },
        index=obs_names.copy(),
    )
    cells["context"] = cells["dataset"] + CONTEXT_SEP + cells["celltype"]
    return EvaluationData(
        X=as_row_matrix(matrix), genes=list(genes), cells=cells, split_name=split_name
    )


def as_row_matrix(matrix: Any) -> np.ndarray | RowMatrix:
    """A dense array as float32 (no copy when it is one), anything else as a RowMatrix.

    A sparse matrix stays sparse (its rows are densified when read), a reader of an h5ad
    matrix stays on disk (or preloaded within its budget).
    """
    if isinstance(matrix, RowMatrix):
        return matrix
    if sp.issparse(matrix) or isinstance(matrix, H5RowReader):
        return RowMatrix(matrix)
    return np.asarray(matrix).astype(np.float32, copy=False)


_DESIGN_COLUMNS = ("dataset", "context", "perturbation", "is_control")


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


def training_effects(data: EvaluationData) -> TrainingEffects:
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
