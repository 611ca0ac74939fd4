"""``adaptation`` pipeline: MMD shift adapter of a trained run to a new domain, predictions."""

from perturbflow.pipelines.adaptation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
