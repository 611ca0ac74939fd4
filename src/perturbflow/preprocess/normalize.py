"""Library-size normalisation and log1p (scanpy), on a copy."""

from __future__ import annotations

import logging
from typing import Any

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp

from perturbflow.exceptions import InputError, suggest

logger = logging.getLogger(__name__)

UNS_KEY = "perturbflow"


def record_uns(adata: ad.AnnData, key: str, value: dict[str, Any]) -> None:
    """Store ``value`` under ``adata.uns["perturbflow"][key]`` without touching shared dicts.

    The ``perturbflow`` dict is rebuilt rather than updated in place, so a copy whose
    ``uns`` still shares nested dicts with its source never changes the source.
    """
    adata.uns[UNS_KEY] = {**dict(adata.uns.get(UNS_KEY, {})), key: value}


def normalisation_record(kind: str, effective: float, target_sum: float | None) -> dict:
    """``uns["perturbflow"]["normalisation"]``: what was done to ``X``.

    Args:
        kind: ``"counts"`` (normalised + log1p) or ``"log1p"`` (used as is).
        effective: The counts per cell after normalisation.
        target_sum: The configured target (``None``: the median library size).
    """
    if kind == "log1p":
        return {"input": "log1p", "normalised": False}
    return {
        "input": "counts",
        "normalised": True,
        "method": "sc.pp.normalize_total + sc.pp.log1p",
        "target_sum": effective,
        "target_sum_is_median": target_sum is None,
        "counts_layer": "counts",
    }


def normalize_log1p(adata: ad.AnnData, *, target_sum: float | None, kind: str) -> ad.AnnData:
    """Return a log1p-normalised copy of ``adata``.

    With ``kind="counts"`` the raw counts are kept in ``layers["counts"]``, then
    ``sc.pp.normalize_total`` scales every cell to ``target_sum`` (``None``: the median
    library size of the non-empty cells, scanpy's default) and ``sc.pp.log1p`` takes
    ``log(1 + x)``. With ``kind="log1p"`` the copy is returned unchanged. Either way
    ``uns["perturbflow"]["normalisation"]`` records what was done.

    Args:
        adata: The screen; never modified.
        target_sum: Counts per cell after normalisation, or ``None`` for the median.
        kind: What ``X`` holds: ``"counts"`` or ``"log1p"`` (see
            :func:`~perturbflow.preprocess.validate_adata`).

    Returns:
        The normalised copy (``X`` log1p).

    Raises:
        InputError: For another ``kind`` or a non-positive ``target_sum``.
    """
    if kind not in ("counts", "log1p"):
        raise InputError(
            f"normalize_log1p: kind={kind!r} must be 'counts' or 'log1p'."
            f"{suggest(kind, ['counts', 'log1p'])}"
        )
    if target_sum is not None and not target_sum > 0:
        raise InputError(f"normalize_log1p: target_sum={target_sum!r} must be positive or None.")
    out = adata.copy()
    if kind == "log1p":
        record_uns(out, "normalisation", {"input": "log1p", "normalised": False})
        logger.info("X already holds log1p values: no normalisation")
        return out

    library = np.asarray(out.X.sum(axis=1)).ravel()
    n_empty = int((library == 0).sum())
    if n_empty:
        logger.warning("%d cells have no counts; they stay all-zero after normalisation", n_empty)
    effective = (
        float(target_sum) if target_sum is not None else float(np.median(library[library > 0]))
    )
    if not np.issubdtype(out.X.dtype, np.floating):
        out.X = out.X.astype(np.float32)
    out.layers["counts"] = out.X.copy()
    sc.pp.normalize_total(out, target_sum=target_sum)
    sc.pp.log1p(out)
    record_uns(out, "normalisation", normalisation_record("counts", effective, target_sum))
    logger.info(
        "Normalised %d cells to %.6g counts (%s) and applied log1p; raw counts in "
        "layers['counts'] (%s)",
        out.n_obs,
        effective,
        "median library size" if target_sum is None else "target_sum",
        "sparse" if sp.issparse(out.X) else "dense",
    )
    return out
