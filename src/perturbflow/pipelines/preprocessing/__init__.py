"""``preprocessing`` pipeline: validate, normalise, filter knockdowns, select HVGs."""

from perturbflow.pipelines.preprocessing.pipeline import create_pipeline

__all__ = ["create_pipeline"]
