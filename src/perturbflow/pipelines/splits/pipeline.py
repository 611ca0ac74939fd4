"""``splits`` pipeline definition."""

from kedro.pipeline import Pipeline, node

from perturbflow.pipelines.splits.nodes import build_split_table


def create_pipeline(**kwargs: object) -> Pipeline:
    """Preprocessed screen + split configs -> per-cell split table and its summary."""
    return Pipeline(
        [
            node(
                build_split_table,
                inputs=["preprocessed_adata@cells", "params:columns", "params:splits"],
                outputs=["split_table", "split_summary"],
                name="build_split_table",
            )
        ]
    )
