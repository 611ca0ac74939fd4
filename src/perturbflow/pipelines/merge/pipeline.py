"""``merge`` pipeline definition."""

from kedro.pipeline import Pipeline, node, pipeline

from perturbflow.pipelines.merge.nodes import merge_screens
from perturbflow.pipelines.preprocessing.pipeline import (
    create_pipeline as create_preprocessing,
)


def create_pipeline(**kwargs: object) -> Pipeline:
    """Folder of raw screens -> one merged raw AnnData -> the preprocessing of it.

    The preprocessing nodes are the ``preprocessing`` pipeline's, reading
    ``merged_raw_adata`` in place of ``raw_adata``: ``kedro run --pipelines merge`` leaves
    ``preprocessed_adata`` built from the merged screens, ready for
    ``kedro run --pipelines splits,training,evaluation``.
    """
    merge = Pipeline(
        [
            node(
                merge_screens,
                inputs=["raw_partitions", "params:columns"],
                outputs="merged_raw_adata",
                name="merge_screens",
            )
        ]
    )
    preprocessing = create_preprocessing()
    # the namespace only renames the node (merged.preprocess), so that this pipeline can run
    # beside `preprocessing`; every dataset and parameter keeps its own name
    preprocess_merged = pipeline(
        preprocessing,
        inputs={"raw_adata": "merged_raw_adata"},
        outputs={name: name for name in preprocessing.outputs()},
        parameters={name: name for name in preprocessing.inputs() if name.startswith("params:")},
        namespace="merged",
    )
    return merge + preprocess_merged
