"""``adaptation`` pipeline: a trained run adapted to a new domain by an MMD shift, predictions."""

from perturbflow.pipelines.adaptation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
