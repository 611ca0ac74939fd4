"""``merge`` pipeline: several raw screens -> one AnnData (inner join of genes)."""

from perturbflow.pipelines.merge.pipeline import create_pipeline

__all__ = ["create_pipeline"]
