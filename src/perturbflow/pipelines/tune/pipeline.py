"""``tune`` pipeline definition."""

from kedro.pipeline import Pipeline, node

from perturbflow.pipelines.tune.nodes import tune_finetuning_hyperparameters


def create_pipeline(**kwargs: object) -> Pipeline:
    """Preprocessed screen + split table + base run -> Optuna study and its reports."""
    return Pipeline(
        [
            node(
                tune_finetuning_hyperparameters,
                inputs=[
                    "st_models",
                    "tune_storage",
                    "preprocessed_adata@cells",
                    "split_table",
                    "hvg_genes",
                    "params:columns",
                    "params:loader",
                    "params:finetuning",
                    "params:tune",
                ],
                outputs=[
                    "tune_best_params",
                    "tune_trials",
                    "tune_history_plot",
                    "tune_importances_plot",
                    "tune_parallel_plot",
                ],
                name="tune",
            )
        ]
    )
