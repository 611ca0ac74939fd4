"""Nodes of the ``merge`` pipeline."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import PurePosixPath

import anndata as ad

from perturbflow.params import ColumnsParams
from perturbflow.preprocess import merge_datasets


def merge_screens(
    raw_partitions: Mapping[str, Callable[[], ad.AnnData]], columns: ColumnsParams
) -> ad.AnnData:
    """Merge every h5ad of the ``raw_partitions`` folder; the dataset name is the file stem.

    Args:
        raw_partitions: Load functions keyed by partition (file) name.
        columns: ``dataset_col`` names the column that records each cell's dataset
            (``"dataset"`` when it is ``None``).

    Returns:
        The merged AnnData.
    """
    adatas = {PurePosixPath(key).name: load() for key, load in sorted(raw_partitions.items())}
    return merge_datasets(adatas, dataset_col=columns.dataset_col or "dataset")
