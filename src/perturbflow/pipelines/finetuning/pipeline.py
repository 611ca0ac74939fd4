"""``finetuning`` pipeline definition."""

from kedro.pipeline import Pipeline, node

from perturbflow.pipelines.finetuning.nodes import finetune_model, predict_finetuned


def create_pipeline(**kwargs: object) -> Pipeline:
    """Base run + preprocessed screen + split table -> finetuned run -> test predictions."""
    return Pipeline(
        [
            node(
                finetune_model,
                inputs=[
                    "preprocessed_adata@cells",
                    "split_table",
                    "hvg_genes",
                    "params:columns",
                    "params:loader",
                    "params:finetuning",
                ],
                outputs="finetuned_run",
                name="finetune_st_model",
            ),
            node(
                predict_finetuned,
                inputs=[
                    "finetuned_run",
                    "preprocessed_adata@cells",
                    "split_table",
                    "hvg_genes",
                    "params:columns",
                    "params:loader",
                    "params:evaluation",
                ],
                outputs=["finetuned_predictions", "finetuned_prediction_sources"],
                name="predict_finetuned",
            ),
        ]
    )
