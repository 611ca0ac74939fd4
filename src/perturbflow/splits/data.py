"""The expression matrix, split labels and training effects that every predictor reads.

A *context* is a (dataset, cell type) pair, written ``"dataset.celltype"`` as in STATE's
TOML files (:mod:`perturbflow.design`). A perturbation's *effect* (delta) in a
context is the mean expression of its cells minus the mean of that context's control cells.
Everything a baseline learns comes from cells labelled ``train`` in the split; held-out
(``val``/``test``) cells are only read to build the real side of an evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.design import join_contexts
from perturbflow.exceptions import InputError
from perturbflow.loading.h5reader import H5RowReader
from perturbflow.loading.row_matrix import RowMatrix, row_blocks
from perturbflow.splits.rows import KeyRowIndex
from perturbflow.splits.table import DESIGN_COLUMNS


@dataclass(frozen=True)
class SplitCells:
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

    @cached_property
    def _control_means(self) -> dict[str, np.ndarray]:
        return {}

    def control_mean(self, context: str) -> np.ndarray:
        """Mean expression of all control cells of ``context`` (float64, cached).

        Read in blocks of rows, so a large context's controls are never held whole.
        """
        if context not in self._control_means:
            rows = self.control_rows(context)
            total = np.zeros(self.X.shape[1], dtype=np.float64)
            for _, block in row_blocks(self.X, rows):
                total += np.asarray(block, dtype=np.float64).sum(axis=0)
            self._control_means[context] = total / max(len(rows), 1)
        return self._control_means[context]

    def heldout_contexts(self, label: str) -> list[str]:
        """Contexts that have perturbed cells labelled ``label`` (sorted)."""
        return self.rows.heldout_contexts(label)

    def heldout_perturbations(self, context: str, label: str) -> list[str]:
        """Perturbations of ``context`` whose cells are labelled ``label`` (sorted)."""
        return self.rows.heldout_perturbations(context, label)

    def heldout_keys(self, label: str) -> dict[tuple[str, str], int]:
        """Every ``(context, perturbation)`` labelled ``label`` and its number of real cells."""
        return {
            (context, pert): len(self.perturbation_rows(context, pert, label))
            for context in self.heldout_contexts(label)
            for pert in self.heldout_perturbations(context, label)
        }

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


def split_cells(
    adata: ad.AnnData,
    split_table: pd.DataFrame,
    split_name: str,
    *,
    genes: list[str],
    obsm_key: str | None = "X_hvg",
) -> SplitCells:
    """Assemble :class:`SplitCells` from a preprocessed AnnData and a split table.

    Args:
        adata: Preprocessed AnnData (log1p), holding ``obsm[obsm_key]`` when set.
        split_table: Per-cell split table with ``dataset``, ``celltype``,
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
) -> SplitCells:
    """:class:`SplitCells` of cells ``obs_names`` (rows of ``matrix``) in one split.

    Args:
        obs_names: The cells, in the matrix's row order.
        split_table: Per-cell split table (see :func:`split_cells`).
        split_name: Which named split's labels to use.
        genes: Names of the matrix's columns.
        matrix: The expression: a dense array (kept, as float32), a sparse matrix or an
            :class:`~perturbflow.loading.h5reader.H5RowReader` (read by rows, never
            densified whole).

    Raises:
        InputError: The split is missing, the cells of the table and the matrix differ, or
            the gene list does not match the matrix width.
    """
    missing_design = [c for c in DESIGN_COLUMNS if c not in split_table.columns]
    if missing_design:
        raise InputError(
            f"The split table lacks the design column(s) {missing_design} (a table written "
            "before the cell-type column was named `celltype` has `context` instead): rerun "
            "`kedro run --pipelines splits`."
        )
    if split_name not in split_table.columns:
        raise InputError(
            f"Split {split_name!r} is not in the split table; it has "
            f"{[c for c in split_table.columns if c not in DESIGN_COLUMNS]}."
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
            "celltype": table["celltype"].astype(str).to_numpy(),
            "perturbation": table["perturbation"].astype(str).to_numpy(),
            "is_control": table["is_control"].astype(bool).to_numpy(),
            "split": table[split_name].astype(str).to_numpy(),
        },
        index=obs_names.copy(),
    )
    cells["context"] = join_contexts(cells["dataset"], cells["celltype"])
    return SplitCells(
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
