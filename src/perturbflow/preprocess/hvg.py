"""Highly variable genes (scanpy) and the dense ``obsm['X_hvg']`` matrix STATE reads."""

from __future__ import annotations

import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from perturbflow.exceptions import InputError, suggest
from perturbflow.preprocess.normalize import record_uns
from perturbflow.preprocess.validation import detect_expression_kind

logger = logging.getLogger(__name__)

FLAVORS = ("seurat", "cell_ranger")
STAT_COLUMNS = ("means", "dispersions", "dispersions_norm")


def _constant_genes(X: object) -> np.ndarray:
    """Boolean mask of genes with the same value in every cell, without copying ``X``.

    For CSR input a gene is constant when it has no non-zero value, or when every cell
    stores one and they are all equal (only those few columns are sliced out).
    """
    if sp.issparse(X) and X.format == "csr":
        n_obs, n_vars = X.shape
        nonzero = np.bincount(X.indices[X.data != 0], minlength=n_vars)
        constant = nonzero == 0
        full = np.flatnonzero(nonzero == n_obs)
        if full.size:
            sub = X[:, full]
            constant[full] = sub.max(axis=0).toarray().ravel() == sub.min(axis=0).toarray().ravel()
        return constant
    if sp.issparse(X):
        return X.max(axis=0).toarray().ravel() == X.min(axis=0).toarray().ravel()
    X = np.asarray(X)
    return X.max(axis=0) == X.min(axis=0)


#: ``hvg_format: auto`` stores ``obsm['X_hvg']`` dense up to this size, CSR above it.
DENSE_HVG_MAX_BYTES = 1 << 30
HVG_FORMATS = ("auto", "dense", "csr")


def cap_n_top_genes(n_top_genes: int, n_vars: int, n_varying: int) -> int:
    """``n_top_genes`` capped at the genes there are and that vary (one INFO line).

    Asking for more HVGs than a small panel has is the normal case (the default 2,000 on
    the shipped 500-gene subset): every varying gene is then kept. It is said once, at
    INFO, not as a warning a user must act on.
    """
    n = min(n_top_genes, n_vars, n_varying)
    if n < n_top_genes:
        logger.info(
            "n_top_genes=%d: the data have %d genes, %d of which vary across cells (constant "
            "genes are never selected): all %d are kept as HVGs.",
            n_top_genes,
            n_vars,
            n_varying,
            n,
        )
    return n


def exactly_n(stats: pd.DataFrame, n: int) -> np.ndarray:
    """Scanpy's ``highly_variable`` column, or the top ``n`` by normalised dispersion.

    scanpy keeps every gene at or above the ``n``-th normalised dispersion, more than ``n``
    on ties; then the ``n`` genes with the highest normalised dispersion are kept.
    """
    chosen = stats["highly_variable"].to_numpy(dtype=bool)
    if int(chosen.sum()) != n:
        order = np.argsort(-stats["dispersions_norm"].fillna(-np.inf).to_numpy(), kind="stable")
        chosen = np.zeros(len(stats), dtype=bool)
        chosen[order[:n]] = True
        logger.info(
            "scanpy's cut-off kept %d genes; kept the top %d by dispersion", chosen.sum(), n
        )
    return chosen


def seurat_statistics(
    mean: np.ndarray, var: np.ndarray, n_top_genes: int, n_bins: int = 20
) -> pd.DataFrame:
    """Scanpy's ``seurat`` flavour from per-gene moments of the ``expm1`` expression.

    scanpy computes the same from the matrix in memory (after an ``expm1`` copy of it);
    its result depends on the matrix only through each gene's mean and variance (ddof=1),
    which the out-of-core preprocessing accumulates block by block, so the rest of the
    flavour is written out here: log dispersion, ``n_bins`` equal-width bins of log mean,
    z-score within a bin (a bin of one gene: normalised dispersion 1), and the genes at or
    above the ``n_top_genes``-th normalised dispersion.

    Args:
        mean: Mean of ``expm1(X)`` per gene (varying genes only).
        var: Its variance with ``ddof=1``.
        n_top_genes: How many genes to select (ties may add more; see :func:`exactly_n`).
        n_bins: scanpy's ``n_bins``.

    Returns:
        ``highly_variable``, ``means``, ``dispersions``, ``dispersions_norm`` per gene.
    """
    mean = np.asarray(mean, dtype=np.float64).copy()
    mean[mean == 0] = 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = np.asarray(var, dtype=np.float64) / mean
        dispersion[dispersion == 0] = np.nan
        dispersion = np.log(dispersion)
    df = pd.DataFrame({"means": np.log1p(mean), "dispersions": dispersion})
    df["mean_bin"] = pd.cut(df["means"], bins=n_bins)
    grouped = df.groupby("mean_bin", observed=True)["dispersions"]
    per_bin = grouped.agg(avg="mean", dev="std")
    single = per_bin["dev"].isnull()  # one gene in its bin: normalised dispersion 1
    per_bin.loc[single, "dev"] = per_bin.loc[single, "avg"]
    per_bin.loc[single, "avg"] = 0
    stats = per_bin.loc[df["mean_bin"]].set_index(df.index)
    df["dispersions_norm"] = (df["dispersions"] - stats["avg"]) / stats["dev"]
    norm = df["dispersions_norm"].to_numpy()
    finite = norm[~np.isnan(norm)]
    n = min(n_top_genes, finite.size)
    cutoff = np.sort(finite)[::-1][n - 1] if n > 0 else np.inf
    df["highly_variable"] = np.nan_to_num(norm, nan=-np.inf) >= cutoff
    return df[["highly_variable", "means", "dispersions", "dispersions_norm"]]


def hvg_is_dense(n_rows: int, n_cols: int, *, sparse: bool, hvg_format: str) -> bool:
    """Whether ``obsm['X_hvg']`` is stored dense (``hvg_format``; see :func:`hvg_matrix`).

    Raises:
        InputError: An unknown ``hvg_format``.
    """
    if hvg_format not in HVG_FORMATS:
        raise InputError(f"hvg_format={hvg_format!r} is not one of {list(HVG_FORMATS)}.")
    if hvg_format != "auto":
        return hvg_format == "dense"
    return not sparse or n_rows * n_cols * 4 <= DENSE_HVG_MAX_BYTES


def hvg_matrix(X: object, columns: np.ndarray, hvg_format: str = "auto") -> object:
    """The HVG columns of ``X`` as float32, dense or CSR as ``hvg_format`` says.

    ``auto``: dense when ``X`` is dense or the dense result takes at most
    :data:`DENSE_HVG_MAX_BYTES`, CSR otherwise (a sparse screen is never densified whole
    past that size).
    """
    sub = X[:, columns]
    if not hvg_is_dense(sub.shape[0], sub.shape[1], sparse=sp.issparse(sub), hvg_format=hvg_format):
        return sp.csr_matrix(sub, dtype=np.float32)
    sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
    return sub.astype(np.float32, copy=False)


def _check_hvg_inputs(adata: ad.AnnData, n_top_genes: int, flavor: str) -> None:
    """Unknown flavour, ``n_top_genes < 1`` or raw counts: refused before any copy."""
    if flavor not in FLAVORS:
        raise InputError(
            f"select_hvg: flavor={flavor!r} is not one of {list(FLAVORS)}."
            f"{suggest(flavor, FLAVORS)}"
        )
    if n_top_genes < 1:
        raise InputError(f"select_hvg: n_top_genes={n_top_genes} must be at least 1.")
    if detect_expression_kind(adata.X) == "counts":
        raise InputError(
            "select_hvg: X holds raw counts; HVGs are selected on log1p data. "
            "Run normalize_log1p(adata, kind='counts', ...) first."
        )


def select_hvg(
    adata: ad.AnnData, *, n_top_genes: int, flavor: str = "seurat", hvg_format: str = "auto"
) -> tuple[ad.AnnData, list[str]]:
    """Select highly variable genes on log1p data and store them as STATE expects.

    ``sc.pp.highly_variable_genes`` runs on the genes that vary at all: constant genes
    (e.g. all-zero after filtering cells) have no dispersion, make scanpy's seurat
    flavour return fewer genes than asked and its cell_ranger flavour fail, so they are
    left out and never selected. ``n_top_genes`` is capped (said at INFO) at the
    number of varying genes. When scanpy's cut-off keeps a different number of genes
    (ties), the ``n_top_genes`` genes with the highest normalised dispersion are kept.

    The copy gets ``var["highly_variable"]`` (plus scanpy's ``means``, ``dispersions``,
    ``dispersions_norm``; NaN for constant genes) and ``obsm["X_hvg"]``: float32, its
    columns the returned genes in the returned order, dense (``n_obs x n_hvg``, 4 bytes per
    entry: 2.4 GB for 300k cells x 2,000 genes) or CSR (``hvg_format``, :func:`hvg_matrix`).

    Args:
        adata: log1p-normalised screen; never modified.
        n_top_genes: How many genes to select.
        flavor: ``"seurat"`` or ``"cell_ranger"`` (both expect log1p data).
        hvg_format: ``"auto"``, ``"dense"`` or ``"csr"`` (see :func:`hvg_matrix`).

    Returns:
        The annotated copy and the HVG names sorted by their position in ``var_names``
        (the order of the ``obsm["X_hvg"]`` columns; save it as JSON next to the file).

    Raises:
        InputError: Unknown flavour, ``n_top_genes < 1``, raw counts in ``X``, no
            varying gene, or scanpy failing on the data.
    """
    _check_hvg_inputs(adata, n_top_genes, flavor)
    out = adata.copy()
    varying = ~_constant_genes(out.X)
    n_varying = int(varying.sum())
    if n_varying == 0:
        raise InputError("select_hvg: every gene is constant across cells; nothing varies.")
    n = cap_n_top_genes(n_top_genes, out.n_vars, n_varying)

    # scanpy reads uns["log1p"]["base"]; the temporary AnnData shares X when no gene is
    # constant, else holds a column subset.
    X_fit = out.X if n_varying == out.n_vars else out.X[:, varying]
    fit = ad.AnnData(X=X_fit, uns={"log1p": dict(out.uns.get("log1p", {"base": None}))})
    fit.var_names = out.var_names[varying]
    try:
        with warnings.catch_warnings():  # handled below: the top n by dispersion are kept
            warnings.filterwarnings("ignore", message=".*n_top_genes. > number of normalized")
            stats = sc.pp.highly_variable_genes(fit, n_top_genes=n, flavor=flavor, inplace=False)
    except ValueError as err:
        raise InputError(
            f"select_hvg: scanpy's {flavor!r} flavour failed on these data ({err}). "
            "Try hvg_flavor: seurat."
        ) from err
    stats.index = fit.var_names
    chosen = exactly_n(stats, n)

    highly_variable = pd.Series(False, index=out.var_names)
    highly_variable[fit.var_names[chosen]] = True
    out.var["highly_variable"] = highly_variable.to_numpy()
    for col in STAT_COLUMNS:
        if col in stats:
            out.var[col] = stats[col].reindex(out.var_names).to_numpy(dtype=np.float64)

    idx = np.flatnonzero(out.var["highly_variable"].to_numpy())
    hvg_genes = [str(g) for g in out.var_names[idx]]
    out.obsm["X_hvg"] = hvg_matrix(out.X, idx, hvg_format)
    record_uns(out, "hvg", {"flavor": flavor, "n_top_genes": n_top_genes, "n_selected": len(idx)})
    X_hvg = out.obsm["X_hvg"]
    nbytes = X_hvg.data.nbytes + X_hvg.indices.nbytes if sp.issparse(X_hvg) else X_hvg.nbytes
    logger.info(
        "Selected %d highly variable genes (%s) of %d; obsm['X_hvg'] is %d x %d float32, %s "
        "(%.1f MB)",
        len(idx),
        flavor,
        out.n_vars,
        out.n_obs,
        len(idx),
        "CSR" if sp.issparse(X_hvg) else "dense",
        nbytes / 1e6,
    )
    return out, hvg_genes
