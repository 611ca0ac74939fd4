"""A user's AnnData in the model's genes, and the model's output in the user's genes.

:func:`aligned_matrix` reads an input's expression in the model's genes by name (or its
``obsm`` embedding), refusing missing genes and NaN/inf values (:func:`check_finite`, by
blocks of rows) before anything is densified. :func:`with_input_genes` turns predictions in
the model's genes back into the input's genes, in the input's order: the genes the model
does not predict are taken from the control cells each prediction started from (or their
mean), and ``var['predicted']`` says which are which, so the output goes straight into
``cell-eval run`` against the input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.exceptions import InputError
from perturbflow.loading._messages import listed
from perturbflow.models.inference.predict import Key
from perturbflow.models.runs.run_dir import TrainedRun
from perturbflow.params import ColumnsParams
from perturbflow.preprocess.validation import detect_expression_kind, value_counts
from perturbflow.splits.data import SplitCells

logger = logging.getLogger(__name__)

BLOCK_ROWS = 4096
#: Values (rows x genes) of one dense block at most, whatever the number of genes.
BLOCK_VALUES = 1 << 24


def _block_rows(n_cols: int) -> int:
    """Rows per block: :data:`BLOCK_ROWS`, fewer for wide matrices (:data:`BLOCK_VALUES`)."""
    return max(1, min(BLOCK_ROWS, BLOCK_VALUES // max(n_cols, 1)))


def _non_finite(block: Any) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the NaN or inf values of a block (stored values when sparse)."""
    if sp.issparse(block):
        coo = sp.coo_matrix(block)
        bad = ~np.isfinite(coo.data)
        return coo.row[bad], coo.col[bad]
    rows, cols = np.nonzero(~np.isfinite(np.asarray(block)))
    return rows, cols


def check_finite(
    M: Any,
    *,
    source: str,
    what: str,
    cells: Sequence[str],
    names: Sequence[str],
    columns: np.ndarray | None = None,
    kind: str = "genes",
    expected: str = "finite log1p values",
) -> None:
    """Fail when ``M`` (cells x genes, dense or sparse) holds NaN or inf values.

    ``M`` is read in blocks of rows (never densified whole); each block's NaN and inf
    values are counted as the preprocessing counts them
    (:func:`perturbflow.preprocess.validation.value_counts`: the stored values of a sparse
    matrix), and only a block that has some is searched for where they are.

    Args:
        M: The matrix, e.g. ``adata.X`` or an obsm entry.
        source: The input's name (its path), first word of the message.
        what: What ``M`` is (``X``, ``obsm['X_pca']``).
        cells: The name of every row of ``M``.
        names: The name of every column read (of ``columns`` when given).
        columns: Only these columns of ``M`` (in this order), or ``None`` for all.
        kind: What the columns are, for the message.
        expected: What the values should be, for the message.

    Raises:
        InputError: Naming ``source``, how many cells, the first genes and cells.
    """
    found_rows, found_cols = [], []
    step = _block_rows(M.shape[1] if columns is None else len(columns))
    for start in range(0, M.shape[0], step):
        block = M[start : start + step]
        block = block if columns is None else block[:, columns]
        n_nan, n_inf, _, _ = value_counts(block)
        if n_nan or n_inf:
            rows, cols = _non_finite(block)
            found_rows.append(rows + start)
            found_cols.append(cols)
    if not found_rows:
        return
    rows = np.unique(np.concatenate(found_rows))
    cols = np.unique(np.concatenate(found_cols))
    raise InputError(
        f"{source}: {what} holds NaN or inf values in {len(rows):,} cells and {len(cols):,} "
        f"{kind}: {kind} {listed([str(names[c]) for c in cols])}; cells "
        f"{listed([str(cells[r]) for r in rows])}. Expected {expected}: fix or drop those "
        f"cells or {kind}."
    )


def aligned_matrix(adata: ad.AnnData, run: TrainedRun, *, source: str) -> np.ndarray:
    """The input's expression in the model's genes and order (dense float32).

    Genes are matched by name to ``run.genes`` (reordered); the other genes are not read;
    missing genes are an error that lists them. An ``embedding`` model reads its obsm key
    instead, whose width must match. The values read are checked for NaN and inf
    (:func:`check_finite`) before they are densified.

    Raises:
        InputError: Missing genes, a missing obsm key, NaN or inf values, or raw counts
            where the model expects log1p expression.
    """
    cells = adata.obs_names.astype(str)
    space = run.config["training"]["model"]["output_space"]
    if space == "embedding":
        key = run.config["loader"]["obsm_key"]
        if key not in adata.obsm:
            raise InputError(
                f"{source}: obsm[{key!r}] (the model's embedding) is missing "
                f"(obsm has {list(adata.obsm)})."
            )
        M = adata.obsm[key]
        if M.shape[1] != len(run.genes):
            raise InputError(
                f"{source}: obsm[{key!r}] has {M.shape[1]} columns, the model {len(run.genes)}."
            )
        check_finite(
            M,
            source=source,
            what=f"obsm[{key!r}]",
            cells=cells,
            names=list(run.genes),
            kind="columns",
            expected="finite values (the model's embedding)",
        )
        return np.asarray(M.toarray() if sp.issparse(M) else M, dtype=np.float32)
    cols = model_columns(adata, run, source=source)
    check_finite(adata.X, source=source, what="X", cells=cells, names=run.genes, columns=cols)
    M = adata.X[:, cols]
    M = M.toarray() if sp.issparse(M) else np.asarray(M)
    if detect_expression_kind(M) == "counts":
        raise InputError(
            f"{source}: X holds raw counts; the model expects log1p-normalised expression "
            "(run the preprocessing pipeline, or scanpy normalize_total + log1p)."
        )
    return M.astype(np.float32, copy=False)


def model_columns(adata: ad.AnnData, run: TrainedRun, *, source: str) -> np.ndarray:
    """The column of each of the model's genes in ``adata`` (matched by name).

    Raises:
        InputError: Duplicate gene names, or genes of the model missing from the input.
    """
    names = pd.Index(adata.var_names.astype(str))
    if names.has_duplicates:
        dup = names[names.duplicated()].unique().tolist()
        raise InputError(f"{source}: duplicate gene names in var_names: {listed(dup)}.")
    missing = [g for g in run.genes if g not in names]
    if missing:
        raise InputError(
            f"{source}: {len(missing)} of the model's {len(run.genes)} genes are missing from "
            f"var_names: {listed(missing)}. The model reads genes by name "
            f"({run.path / 'genes.json'})."
        )
    return names.get_indexer(run.genes)


def prediction_origins(
    obs: pd.DataFrame,
    data: SplitCells,
    columns: ColumnsParams,
    starts: dict[Key, np.ndarray] | None,
    groups: np.ndarray | None,
    *,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The input row each output row's genes not predicted come from, and which are predicted.

    A control cell of the output is its own input row; a predicted cell is the control
    cell its prediction started from (``starts``). Without ``starts`` (per-plate
    prediction, whose starts are not recorded) it is a control cell of the same context
    and plate, drawn with ``seed``: ``groups`` is then the plate of every input row and
    ``obs[columns.batch_col]`` that of every output row.

    Returns:
        The input row of every output row, and whether each output row is a predicted
        cell (not one of the input's control cells).
    """
    context = obs["context"].astype(str).to_numpy()
    pert = obs[columns.pert_col].astype(str).to_numpy()
    is_ctrl = pert == columns.control_label
    origin = np.full(len(obs), -1, dtype=np.int64)
    rng = np.random.default_rng(seed)
    plates = None if starts is not None else obs[columns.batch_col].astype(str).to_numpy()
    by_key = pd.Series(np.arange(len(obs))).groupby([context, pert]).indices
    for c, p in sorted(by_key):
        rows = by_key[(c, p)]  # ascending: the order the output was assembled in
        if p == columns.control_label:
            origin[rows] = data.control_rows(c)
        elif plates is None:
            origin[rows] = starts[(c, p)]
        else:
            ctrl = data.control_rows(c)
            for plate in np.unique(plates[rows]):
                on = rows[plates[rows] == plate]
                pool = ctrl[groups[ctrl] == plate]
                origin[on] = rng.choice(pool, size=len(on), replace=len(on) > len(pool))
    return origin, ~is_ctrl


def control_means(
    X: Any,
    origin: np.ndarray,
    is_pred: np.ndarray,
    data: SplitCells,
    groups: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of every gene over the controls a control-mean prediction started from.

    The controls of a predicted cell are those of its start's context (and batch or
    plate, ``groups``), as :func:`predict_cells` averages them.

    Returns:
        The means (one row per group of controls) and, per output row, its row of the
        means (``-1`` for the cells copied from an input row).
    """
    context = data.cells["context"].to_numpy()
    label = np.zeros(len(context), dtype=int) if groups is None else np.asarray(groups)
    rows = np.flatnonzero(is_pred)
    codes, keys = pd.MultiIndex.from_arrays(
        [context[origin[rows]], label[origin[rows]]]
    ).factorize()
    which = np.full(len(origin), -1, dtype=np.int64)
    which[rows] = codes
    means = np.zeros((len(keys), X.shape[1]), dtype=np.float32)
    for i, (c, group) in enumerate(keys):
        ctrl = data.control_rows(c)
        members = np.sort(ctrl[label[ctrl] == group])
        means[i] = _row_mean(X, members)
    return means, which


def _row_mean(X: Any, rows: np.ndarray) -> np.ndarray:
    """Mean of some rows of ``X`` (dense or sparse), summed in blocks of rows."""
    total = np.zeros(X.shape[1], dtype=np.float64)
    step = _block_rows(X.shape[1])
    for start in range(0, len(rows), step):
        total += np.asarray(X[rows[start : start + step]].sum(axis=0), dtype=np.float64).ravel()
    return total / max(len(rows), 1)


def with_input_genes(
    out: ad.AnnData,
    adata: ad.AnnData,
    genes: Sequence[str],
    origin: np.ndarray,
    means: tuple[np.ndarray, np.ndarray] | None,
) -> ad.AnnData:
    """The predictions with every gene of the input, in its order (``var['predicted']``).

    Built in blocks of rows: the model's genes (``genes``) come from ``out``, the others
    from the input rows in ``origin``, or from the control means of ``means``
    (:func:`control_means`) for the rows it names. Sparse when the input's ``X`` is.
    """
    X = adata.X
    n_genes = X.shape[1]
    cols = pd.Index(adata.var_names.astype(str)).get_indexer(list(genes))
    table, which = means if means is not None else (None, np.full(len(origin), -1))
    step = _block_rows(n_genes)
    blocks = []
    for start in range(0, len(origin), step):
        rows, group = origin[start : start + step], which[start : start + step]
        part = np.empty((len(rows), n_genes), dtype=np.float32)
        copied = group < 0
        if copied.any():
            picked = X[rows[copied]]
            part[copied] = picked.toarray() if sp.issparse(picked) else np.asarray(picked)
        if table is not None and not copied.all():
            part[~copied] = table[group[~copied]]
        part[:, cols] = out.X[start : start + step]
        blocks.append(sp.csr_matrix(part) if sp.issparse(X) else part)
    matrix = sp.vstack(blocks, format="csr") if sp.issparse(X) else np.vstack(blocks)
    var = adata.var.copy()
    var.index = pd.Index(adata.var_names.astype(str))
    var["predicted"] = np.isin(np.arange(n_genes), cols)
    return ad.AnnData(X=matrix, obs=out.obs, var=var, uns=dict(out.uns))
