"""Project pipelines."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The default run: real data to an ST model per split, scored beside honest baselines.

DEFAULT_PIPELINES = ("preprocessing", "splits", "training", "evaluation")


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects; ``__default__`` chains
        preprocessing, splits, training and evaluation.
    """
    pipelines = find_pipelines(raise_errors=True)
    # `kedro run --pipelines NAME` makes find_pipelines load only NAME: never index a
    # pipeline that may be absent, or every other pipeline's run breaks.
    pipelines["__default__"] = sum(
        (pipelines[name] for name in DEFAULT_PIPELINES if name in pipelines), start=Pipeline([])
    )
    return pipelines
