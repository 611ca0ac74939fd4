"""``preprocessing`` pipeline definition."""

from kedro.pipeline import Pipeline, node

from perturbflow.pipelines.preprocessing.nodes import preprocess


def create_pipeline(**kwargs: object) -> Pipeline:
    """Raw screen -> preprocessed AnnData, HVG list and preprocessing report."""
    return Pipeline(
        [
            node(
                preprocess,
                inputs=["raw_adata", "params:columns", "params:preprocessing"],
                outputs=[
                    "preprocessed_adata@anndata",
                    "hvg_genes",
                    "preprocessing_report",
                    "preprocessing_summary",
                ],
                name="preprocess",
            )
        ]
    )
