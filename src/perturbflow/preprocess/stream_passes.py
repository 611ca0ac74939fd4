"""The passes of the out-of-core preprocessing, each over the raw matrix by row blocks.

:func:`~perturbflow.preprocess.stream.preprocess_h5ad` runs them in order (see its module):
:func:`validate_input` (``obs``/``var`` and a row sample), :func:`pass_values` (bad values,
library sizes), :func:`pass_knockdown` (the knockdown filter on the target-gene columns),
:func:`write_kept` (the kept rows' ``X`` and counts, the HVG moments) and :func:`write_hvg`
(``obsm['X_hvg']``). Each holds one block of :func:`rows_per_block` rows at a time.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from perturbflow.exceptions import InputError
from perturbflow.params import ColumnsParams, PreprocessingParams
from perturbflow.preprocess._knockdown_utils import targets_per_label
from perturbflow.preprocess.h5blocks import (
    CSRAppender,
    DenseAppender,
    matrix_shape,
    read_rows,
    row_ranges,
    value_dtype,
)
from perturbflow.preprocess.hvg import hvg_is_dense
from perturbflow.preprocess.hvg_moments import GeneMoments
from perturbflow.preprocess.knockdown import filter_on_target_knockdown
from perturbflow.preprocess.validation import (
    check_value_counts,
    design_summary,
    detect_expression_kind,
    sample_rows,
    validate_design,
    value_counts,
)

logger = logging.getLogger(__name__)

#: Stored values per block of rows (~64 MB of float32 + indices at this size).
BLOCK_VALUES = 8_000_000


def rows_per_block(n_rows: int, nnz: int, n_cols: int) -> int:
    """Rows per block so that a block holds about :data:`BLOCK_VALUES` stored values."""
    per_row = max(1.0, nnz / max(n_rows, 1)) if nnz else n_cols
    return int(max(256, min(n_rows, BLOCK_VALUES // per_row)))


def stored_values(node: h5py.Group | h5py.Dataset) -> int:
    """Stored values of a matrix node: a CSR group's ``data`` length, a dense array's size."""
    return int(node["data"].shape[0]) if isinstance(node, h5py.Group) else int(np.prod(node.shape))


def normalise_block(raw: sp.csr_matrix, kind: str, target_sum: float | None) -> sp.csr_matrix:
    """Normalise + log1p one block of raw counts with scanpy (a log1p block is returned)."""
    if kind == "log1p":
        return raw
    block = ad.AnnData(X=raw.copy())  # scanpy normalises in place
    sc.pp.normalize_total(block, target_sum=target_sum)
    sc.pp.log1p(block)
    return sp.csr_matrix(block.X)


def validate_input(
    node: h5py.Group | h5py.Dataset,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    columns: ColumnsParams,
    params: PreprocessingParams,
    source: str,
) -> tuple[dict[str, Any], int]:
    """Every check that reads ``obs``, ``var`` and a sample of rows; the block size."""
    validate_design(obs, var.index, columns, source=source)
    n_rows, n_cols = matrix_shape(node, f"{source}: X")
    if n_rows != len(obs) or n_cols != len(var):
        raise InputError(
            f"{source}: X is {n_rows} x {n_cols}, obs/var say {len(obs)} x {len(var)}."
        )
    rows = sample_rows(n_rows)
    sample = sp.vstack([read_rows(node, int(r), int(r) + 1) for r in rows]).tocsr()
    summary = design_summary(
        obs,
        columns,
        n_vars=n_cols,
        detected=detect_expression_kind(sample),
        expected_input=params.expected_input,
        source=source,
    )
    return summary, rows_per_block(n_rows, stored_values(node), n_cols)


def pass_values(
    node: h5py.Group | h5py.Dataset, block_rows: int, kind: str, source: str
) -> np.ndarray:
    """Pass 1: fail on NaN/inf/negative values; library size of every cell."""
    n_rows = matrix_shape(node, source)[0]
    counts = np.zeros(4, dtype=np.int64)
    library = np.zeros(n_rows)
    for start, stop in row_ranges(n_rows, block_rows):
        block = read_rows(node, start, stop)
        counts += value_counts(block)
        library[start:stop] = np.asarray(block.sum(axis=1)).ravel()
    check_value_counts(tuple(int(c) for c in counts), source=source)
    if kind == "counts":
        n_empty = int((library == 0).sum())
        if n_empty:
            logger.warning(
                "%d cells have no counts; they stay all-zero after normalisation", n_empty
            )
    return library


def _target_columns(
    obs: pd.DataFrame, var_names: pd.Index, columns: ColumnsParams, params: PreprocessingParams,
    source: str,
) -> np.ndarray:  # fmt: skip
    """Columns of every gene that a perturbation label (or ``target_col``) targets."""
    codes, uniques = pd.factorize(obs[columns.pert_col].astype(str))
    labels = [str(u) for u in uniques]
    targets = targets_per_label(obs, labels, codes, params.knockdown.target_col, source)
    genes = sorted({g for t in targets for g in t} & set(map(str, var_names)))
    return pd.Index(var_names).get_indexer(genes).astype(np.int64)


def pass_knockdown(
    node: h5py.Group | h5py.Dataset,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    block_rows: int,
    norm: tuple[str, float | None],
    columns: ColumnsParams,
    params: PreprocessingParams,
    source: str,
) -> tuple[np.ndarray, pd.DataFrame, dict[str, Any]]:
    """Pass 2: the knockdown filter on the cells x target-genes matrix; the kept rows."""
    cols = _target_columns(obs, var.index, columns, params, source)
    n_rows = len(obs)
    blocks = [
        normalise_block(read_rows(node, start, stop), *norm)[:, cols]
        for start, stop in row_ranges(n_rows, block_rows)
    ]
    targets = ad.AnnData(
        X=sp.vstack(blocks).tocsr() if blocks else sp.csr_matrix((0, len(cols))),
        obs=obs.set_index(pd.Index(np.arange(n_rows).astype(str))),
        var=pd.DataFrame(index=var.index[cols]),
    )
    filtered, table = filter_on_target_knockdown(targets, columns, params.knockdown, source=source)
    keep = np.zeros(n_rows, dtype=bool)
    keep[filtered.obs_names.astype(np.int64)] = True
    return keep, table, dict(filtered.uns["perturbflow"]["knockdown"])


def write_kept(
    node: h5py.Group | h5py.Dataset,
    out: h5py.File,
    keep: np.ndarray,
    block_rows: int,
    norm: tuple[str, float | None],
) -> GeneMoments:
    """Pass 3: write the kept rows' ``X`` (and raw counts); accumulate the HVG moments."""
    n_cols = matrix_shape(node, "X")[1]
    dtype = value_dtype(node)  # as in memory: a float matrix keeps its dtype
    x_out = CSRAppender(out, "X", n_cols, dtype)
    counts_out = None
    if norm[0] == "counts":
        counts_out = CSRAppender(out.require_group("layers"), "counts", n_cols, dtype)
    moments = GeneMoments.zeros(n_cols)
    started = last = time.perf_counter()
    for start, stop in row_ranges(len(keep), block_rows):
        rows = np.flatnonzero(keep[start:stop])
        raw = read_rows(node, start, stop)[rows]
        block = normalise_block(raw, *norm)
        x_out.append(block)
        moments.add(block)
        if counts_out is not None:
            counts_out.append(raw)
        if time.perf_counter() - last > 10 or stop == len(keep):
            last = time.perf_counter()
            logger.info(
                "Preprocessing: %d/%d rows written (%.0f s)", stop, len(keep), last - started
            )
    x_out.close()
    if counts_out is not None:
        counts_out.close()
    return moments


def write_hvg(out: h5py.File, columns: np.ndarray, n_cells: int, hvg_format: str) -> str:
    """Pass 4: ``obsm['X_hvg']`` from the written ``X`` (dense or CSR); the format used."""
    dense = hvg_is_dense(n_cells, len(columns), sparse=True, hvg_format=hvg_format)  # X is CSR
    obsm = out.require_group("obsm")
    writer = (
        DenseAppender(obsm, "X_hvg", n_cells, len(columns))
        if dense
        else CSRAppender(obsm, "X_hvg", len(columns))
    )
    x = out["X"]
    block_rows = rows_per_block(n_cells, stored_values(x), x.attrs["shape"][1])
    for start, stop in row_ranges(n_cells, block_rows):
        writer.append(read_rows(x, start, stop)[:, columns])
    writer.close()
    return "dense" if dense else "csr"
