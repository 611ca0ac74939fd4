"""``training`` pipeline definition."""

from kedro.pipeline import Pipeline, node

from perturbflow.pipelines.training.nodes import predict_st_models, train_models


def create_pipeline(**kwargs: object) -> Pipeline:
    """Preprocessed screen + split table -> ST run directories -> test predictions."""
    return Pipeline(
        [
            node(
                train_models,
                inputs=[
                    "preprocessed_adata@cells",
                    "split_table",
                    "hvg_genes",
                    "params:columns",
                    "params:loader",
                    "params:training",
                    "st_training",
                ],
                outputs="st_models",
                name="train_st_models",
            ),
            node(
                predict_st_models,
                inputs=[
                    "st_models",
                    "preprocessed_adata@cells",
                    "split_table",
                    "hvg_genes",
                    "params:columns",
                    "params:loader",
                    "params:training",
                    "params:evaluation",
                ],
                outputs=[
                    "model_predictions",
                    "st_prediction_sources",
                    "st_quality",
                    "model_validation_scores",
                ],
                name="predict_st",
            ),
        ]
    )
