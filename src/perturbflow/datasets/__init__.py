"""Kedro catalog datasets of perturbflow."""

from perturbflow.datasets.anndata_dataset import AnnDataDataset, describe_h5ad
from perturbflow.datasets.optional_partitions import OptionalPartitionedDataset

__all__ = ["AnnDataDataset", "OptionalPartitionedDataset", "describe_h5ad"]
