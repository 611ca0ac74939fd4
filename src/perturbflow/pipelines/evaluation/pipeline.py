"""``evaluation`` pipeline definition."""

from kedro.pipeline import Pipeline, node

from perturbflow.pipelines.evaluation.nodes import (
    choose_perturbflow,
    format_metrics_table,
    gather_predictions,
    measure_variability,
    plot_metric_comparison,
    plot_predicted_vs_real,
    predict_baselines,
    score_predictions,
)


def create_pipeline(**kwargs: object) -> Pipeline:
    """Preprocessed screen + split table -> baseline predictions, metrics and plots."""
    # long only because it is the node list (eight nodes, their inputs spelled out)
    return Pipeline(
        [
            node(
                predict_baselines,
                inputs=[
                    "preprocessed_adata@cells",
                    "split_table",
                    "hvg_genes",
                    "params:columns",
                    "params:evaluation",
                    "params:loader",
                ],
                outputs=[
                    "baseline_predictions",
                    "heldout_real",
                    "baseline_sources",
                    "linear_baseline_selection",
                    "baseline_validation_scores",
                ],
                name="predict_baselines",
            ),
            node(
                gather_predictions,
                inputs=[
                    "baseline_predictions",
                    "model_predictions",
                    "finetuned_predictions",
                    "heldout_real",
                ],
                outputs="all_predictions",
                name="gather_predictions",
            ),
            node(
                choose_perturbflow,
                inputs=[
                    "all_predictions",
                    "baseline_validation_scores",
                    "model_validation_scores",
                    "finetuned_validation_scores",
                    "baseline_sources",
                ],
                outputs=["evaluated_predictions", "perturbflow_selection", "prediction_sources"],
                name="choose_perturbflow",
            ),
            node(
                score_predictions,
                inputs=[
                    "evaluated_predictions",
                    "heldout_real",
                    "params:columns",
                    "params:evaluation",
                ],
                outputs=["metrics", "per_perturbation_metrics"],
                name="score_predictions",
            ),
            node(
                measure_variability,
                inputs=["evaluated_predictions", "heldout_real", "params:columns"],
                outputs="prediction_variability",
                name="measure_variability",
            ),
            node(
                format_metrics_table,
                inputs=["metrics", "params:evaluation"],
                outputs="metrics_table",
                name="format_metrics_table",
            ),
            node(
                plot_metric_comparison,
                inputs="metrics",
                outputs="metrics_comparison_plot",
                name="plot_metric_comparison",
            ),
            node(
                plot_predicted_vs_real,
                inputs=[
                    "evaluated_predictions",
                    "heldout_real",
                    "params:columns",
                    "params:evaluation",
                ],
                outputs="predicted_vs_real_plot",
                name="plot_predicted_vs_real",
            ),
        ]
    )
