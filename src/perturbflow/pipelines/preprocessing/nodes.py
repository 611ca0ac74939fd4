"""Nodes of the ``preprocessing`` pipeline: thin wrappers over :mod:`perturbflow.preprocess`."""

from __future__ import annotations

import anndata as ad
import pandas as pd

from perturbflow.datasets import H5adCells
from perturbflow.params import ColumnsParams, PreprocessingParams
from perturbflow.preprocess import preprocess_adata, report_to_frame
from perturbflow.preprocess.stream import WrittenH5ad, preprocess_h5ad, streams


def preprocess(
    raw_adata: ad.AnnData | H5adCells, columns: ColumnsParams, preprocessing: PreprocessingParams
) -> tuple[ad.AnnData | WrittenH5ad, list[str], dict, pd.DataFrame]:
    """Validate the raw screen, normalise if needed, filter knockdowns and select HVGs.

    A screen whose matrix is larger than ``preprocessing.out_of_core`` allows is streamed
    from its file by row ranges and written to a temporary file that the catalog moves
    into place; a smaller one is read whole and processed in memory. (The catalog gives
    the raw file's cells, ``H5adCellsDataset``: which way the matrix is read depends on its
    size, which Kedro's datasets cannot decide, so it is read here.)

    Args:
        raw_adata: The raw screen (catalog ``raw_adata``): its file's cells, or an AnnData;
            never modified.
        columns: Where the design lives in ``obs``.
        preprocessing: Normalisation, HVG, knockdown-filter and out-of-core settings.

    Returns:
        The preprocessed AnnData (log1p ``X``, ``obsm['X_hvg']``) or its written file, the
        ordered HVG list, the full report and a flat table of what was kept and dropped,
        and why.
    """
    filename = getattr(raw_adata, "filename", None)
    source = str(filename) if filename is not None else "raw_adata"
    if streams(raw_adata, preprocessing):
        written, hvg_genes, report = preprocess_h5ad(
            filename, columns, preprocessing, source=source
        )
        return written, hvg_genes, report, report_to_frame(report)
    adata = raw_adata if isinstance(raw_adata, ad.AnnData) else ad.read_h5ad(filename)
    if adata.isbacked:
        adata = adata.to_memory()
    processed, hvg_genes, report = preprocess_adata(adata, columns, preprocessing, source=source)
    return processed, hvg_genes, report, report_to_frame(report)
