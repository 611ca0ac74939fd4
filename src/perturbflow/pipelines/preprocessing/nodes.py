"""Nodes of the ``preprocessing`` pipeline: thin wrappers over :mod:`perturbflow.preprocess`."""

from __future__ import annotations

import anndata as ad
import pandas as pd

from perturbflow.params import ColumnsParams, PreprocessingParams
from perturbflow.preprocess import preprocess_adata, report_to_frame


def preprocess(
    raw_adata: ad.AnnData, columns: ColumnsParams, preprocessing: PreprocessingParams
) -> tuple[ad.AnnData, list[str], dict, pd.DataFrame]:
    """Validate the raw screen, normalise if needed, filter knockdowns and select HVGs.

    Args:
        raw_adata: The raw screen (catalog ``raw_adata``); never modified.
        columns: Where the design lives in ``obs``.
        preprocessing: Normalisation, HVG and knockdown-filter settings.

    Returns:
        The preprocessed AnnData (log1p ``X``, ``obsm['X_hvg']``), the ordered HVG list,
        the full report and a flat table of what was kept and dropped, and why.
    """
    adata, hvg_genes, report = preprocess_adata(
        raw_adata, columns, preprocessing, source="raw_adata"
    )
    return adata, hvg_genes, report, report_to_frame(report)
