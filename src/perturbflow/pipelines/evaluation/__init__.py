"""``evaluation`` pipeline: baselines, cell-eval metrics, plots."""

from perturbflow.pipelines.evaluation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
