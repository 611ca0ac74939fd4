"""``adaptation`` pipeline definition."""

from kedro.pipeline import Pipeline, node

from perturbflow.pipelines.adaptation.nodes import (
    embed_source_controls,
    fit_adapter,
    plot_adapter_curve,
    predict_target,
    read_target,
)


def create_pipeline(**kwargs: object) -> Pipeline:
    """Trained run + source controls + target controls -> adapter -> target predictions."""
    return Pipeline(
        [
            node(
                embed_source_controls,
                inputs=["params:adaptation", "params:columns"],
                outputs="adaptation_source_embeddings",
                name="embed_source_controls",
            ),
            node(
                read_target,
                inputs=["params:adaptation", "params:columns"],
                outputs="adaptation_target_cells",
                name="read_adaptation_target",
            ),
            node(
                fit_adapter,
                inputs=[
                    "adaptation_source_embeddings",
                    "adaptation_target_cells",
                    "params:adaptation",
                    "params:columns",
                ],
                outputs=["adaptation_summary", "adaptation_mmd_curve"],
                name="fit_adapter",
            ),
            node(
                plot_adapter_curve,
                inputs=["adaptation_mmd_curve", "params:adaptation"],
                outputs="adaptation_mmd_plot",
                name="plot_adapter_curve",
            ),
            node(
                predict_target,
                inputs=[
                    "adaptation_summary",
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
