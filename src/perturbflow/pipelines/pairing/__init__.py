"""``pairing`` pipeline: each perturbed cell's control, cached by content hash."""

from perturbflow.pipelines.pairing.pipeline import create_pipeline

__all__ = ["create_pipeline"]
