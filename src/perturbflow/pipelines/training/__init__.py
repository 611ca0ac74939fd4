"""``training`` pipeline: ST models per named split, and their test predictions."""

from perturbflow.pipelines.training.pipeline import create_pipeline

__all__ = ["create_pipeline"]
