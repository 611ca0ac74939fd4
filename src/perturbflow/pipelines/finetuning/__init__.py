"""``finetuning`` pipeline: a trained ST run adapted to a split (LoRA or full), predictions."""

from perturbflow.pipelines.finetuning.pipeline import create_pipeline

__all__ = ["create_pipeline"]
