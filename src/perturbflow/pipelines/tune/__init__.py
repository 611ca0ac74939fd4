"""``tune`` pipeline: an Optuna sweep over the finetuning hyper-parameters."""

from perturbflow.pipelines.tune.pipeline import create_pipeline

__all__ = ["create_pipeline"]
