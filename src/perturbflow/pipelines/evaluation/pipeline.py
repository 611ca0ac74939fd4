"""``evaluation`` pipeline definition."""

from kedro.pipeline import Pipeline, node

from perturbflow.pipelines.evaluation.nodes import (
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
    # long only because it is the node list (seven nodes, their inputs spelled out)
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
                    "prediction_sources",
                    "linear_baseline_selection",
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
                score_predictions,
                inputs=[
                    "all_predictions",
                    "heldout_real",
                    "params:columns",
                    "params:evaluation",
                ],
                outputs=["metrics", "per_perturbation_metrics"],
                name="score_predictions",
            ),
            node(
                measure_variability,
                inputs=["all_predictions", "heldout_real", "params:columns"],
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
                    "all_predictions",
                    "heldout_real",
                    "params:columns",
                    "params:evaluation",
                ],
                outputs="predicted_vs_real_plot",
                name="plot_predicted_vs_real",
            ),
        ]
    )
