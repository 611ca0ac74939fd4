"""Kedro catalog datasets of perturbflow."""

from perturbflow.datasets.anndata_dataset import AnnDataDataset, describe_h5ad

__all__ = ["AnnDataDataset", "describe_h5ad"]
