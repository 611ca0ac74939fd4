"""``pairing`` pipeline definition."""

from kedro.pipeline import Pipeline, node

from perturbflow.pipelines.pairing_diagnostic.nodes import build_encodings, pair_controls


def create_pipeline(**kwargs: object) -> Pipeline:
    """Preprocessed screen -> pairing index, its statistics and the encodings (JSON)."""
    return Pipeline(
        [
            node(
                pair_controls,
                inputs=[
                    "preprocessed_adata@cells",
                    "params:columns",
                    "params:loader",
                    "pairing_cache",
                ],
                outputs=["pairing_index", "pairing_stats"],
                name="pair_controls",
            ),
            node(
                build_encodings,
                inputs=["preprocessed_adata@cells", "params:columns"],
                outputs=["perturbation_encoder", "celltype_map", "batch_map"],
                name="build_encodings",
            ),
        ]
    )
