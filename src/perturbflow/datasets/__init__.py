"""Kedro catalog datasets of perturbflow."""

from perturbflow.datasets.anndata_dataset import AnnDataDataset, describe_h5ad
from perturbflow.datasets.h5ad_cells import H5adCells, H5adCellsDataset, read_h5ad_cells
from perturbflow.datasets.model_store import (
    OptunaStorageDataset,
    RunsDataset,
    ShiftsDataset,
    StoredModels,
    WorkFolderDataset,
)
from perturbflow.datasets.optional_partitions import OptionalPartitionedDataset

__all__ = [
    "AnnDataDataset",
    "H5adCells",
    "H5adCellsDataset",
    "OptionalPartitionedDataset",
    "OptunaStorageDataset",
    "RunsDataset",
    "ShiftsDataset",
    "StoredModels",
    "WorkFolderDataset",
    "describe_h5ad",
    "read_h5ad_cells",
]
