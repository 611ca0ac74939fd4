"""``merge`` pipeline definition."""

from kedro.pipeline import Pipeline, node

from perturbflow.pipelines.merge.nodes import merge_screens


def create_pipeline(**kwargs: object) -> Pipeline:
    """Folder of raw screens -> one merged raw AnnData."""
    return Pipeline(
        [
            node(
                merge_screens,
                inputs=["raw_partitions", "params:columns"],
                outputs="merged_raw_adata",
                name="merge_screens",
            )
        ]
    )
