"""Nodes of the ``splits`` pipeline: thin wrappers over :mod:`perturbflow.splits`."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pandas as pd

from perturbflow.params import ColumnsParams, SplitsParams
from perturbflow.splits import split_table_from_params, summarise_split_table


def build_split_table(
    preprocessed_adata: ad.AnnData, columns: ColumnsParams, splits: SplitsParams
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Label every cell train/val/test/unused for each named split.

    TOML paths in the params are relative to the project root, where ``kedro run`` runs.

    Args:
        preprocessed_adata: The preprocessed screen (opened backed: only ``obs`` is read).
        columns: Where the design lives in ``obs``.
        splits: The named splits (TOML files or inline sections).

    Returns:
        The per-cell split table and a summary of cells and perturbations per split.
    """
    obs = preprocessed_adata.obs.copy()
    table = split_table_from_params(obs, splits, columns, project_root=Path.cwd())
    return table, summarise_split_table(table, list(splits.active()))
