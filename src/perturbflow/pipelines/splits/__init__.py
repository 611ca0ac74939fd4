"""``splits`` pipeline: TOML or params split configs -> per-cell split table."""

from perturbflow.pipelines.splits.pipeline import create_pipeline

__all__ = ["create_pipeline"]
