"""The ``adaptation`` pipeline: an MMD shift of a new domain's controls, then predictions."""

from kedro.pipeline import Pipeline, node

from perturbflow.pipelines.adaptation.nodes import (
    embed_source_controls,
    fit_target_shift,
    plot_shift_curve,
    predict_target,
    read_target,
)


def create_pipeline(**kwargs: object) -> Pipeline:
    """st_models -> embed source controls, fit the shift -> mmd_shifts -> predictions."""
    return Pipeline(
        [
            node(
                embed_source_controls,
                inputs=[
                    "st_models",
                    "preprocessed_adata@cells",
                    "params:adaptation",
                    "params:columns",
                ],
                outputs="adaptation_source_embeddings",
                name="embed_source_controls",
            ),
            node(
                read_target,
                inputs=["preprocessed_adata@cells", "params:adaptation", "params:columns"],
                outputs="adaptation_target_cells",
                name="read_adaptation_target",
            ),
            node(
                fit_target_shift,
                inputs=[
                    "st_models",
                    "adaptation_source_embeddings",
                    "adaptation_target_cells",
                    "params:adaptation",
                    "params:columns",
                ],
                outputs=["mmd_shifts", "adaptation_summary", "adaptation_mmd_curve"],
                name="fit_mmd_shift",
            ),
            node(
                plot_shift_curve,
                inputs=["adaptation_mmd_curve", "params:adaptation"],
                outputs="adaptation_mmd_plot",
                name="plot_mmd_curve",
            ),
            node(
                predict_target,
                inputs=[
                    "st_models",
                    "mmd_shifts",
                    "adaptation_target_cells",
                    "params:adaptation",
                    "params:columns",
                ],
                outputs=[
                    "adapted_predictions",
                    "adapted_prediction_means",
                    "adapted_prediction_sources",
                ],
                name="predict_adapted_target",
            ),
        ]
    )
