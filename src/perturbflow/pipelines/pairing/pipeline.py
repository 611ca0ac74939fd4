"""``pairing`` pipeline definition."""

from kedro.pipeline import Pipeline, node

from perturbflow.pipelines.pairing.nodes import pair_controls


def create_pipeline(**kwargs: object) -> Pipeline:
    """Preprocessed screen -> pairing index and its statistics."""
    return Pipeline(
        [
            node(
                pair_controls,
                inputs=[
                    "preprocessed_adata@backed",
                    "params:columns",
                    "params:loader",
                    "params:pairing",
                ],
                outputs=["pairing_index", "pairing_stats"],
                name="pair_controls",
            )
        ]
    )
