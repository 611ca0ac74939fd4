"""The ``finetuning`` pipeline: a trained run finetuned on a new context, then predicted."""

from kedro.pipeline import Pipeline, node

from perturbflow.pipelines.finetuning.nodes import finetune_model, predict_finetuned


def create_pipeline(**kwargs: object) -> Pipeline:
    """st_models (a trained run) -> finetune -> finetuned_models -> finetuned_predictions."""
    return Pipeline(
        [
            node(
                finetune_model,
                inputs=[
                    "st_models",
                    "preprocessed_adata@cells",
                    "split_table",
                    "hvg_genes",
                    "params:columns",
                    "params:loader",
                    "params:finetuning",
                    "finetuning_training",
                ],
                outputs="finetuned_models",
                name="finetune_st_model",
            ),
            node(
                predict_finetuned,
                inputs=[
                    "finetuned_models",
                    "preprocessed_adata@cells",
                    "split_table",
                    "hvg_genes",
                    "params:columns",
                    "params:loader",
                    "params:finetuning",
                    "params:evaluation",
                ],
                outputs=[
                    "finetuned_predictions",
                    "finetuned_prediction_sources",
                    "finetuned_validation_scores",
                ],
                name="predict_finetuned",
            ),
        ]
    )
