"""Project pipelines."""

from __future__ import annotations

import logging
import time

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

logger = logging.getLogger(__name__)

# The default run: real data to an ST model per split, scored beside honest baselines.

DEFAULT_PIPELINES = ("preprocessing", "splits", "training", "evaluation")


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects; ``__default__`` chains
        preprocessing, splits, training and evaluation.
    """
    # importing the nodes loads torch, Lightning, scanpy and cell-eval: seconds on an idle
    # machine, up to a minute on a busy one, which used to pass in silence
    logger.info("Loading the pipelines (imports torch, Lightning, scanpy, cell-eval)...")
    started = time.perf_counter()
    pipelines = find_pipelines(raise_errors=True)
    logger.info("Pipelines loaded in %.0f s.", time.perf_counter() - started)
    # `kedro run --pipelines NAME` makes find_pipelines load only NAME: never index a
    # pipeline that may be absent, or every other pipeline's run breaks.
    pipelines["__default__"] = sum(
        (pipelines[name] for name in DEFAULT_PIPELINES if name in pipelines), start=Pipeline([])
    )
    return pipelines
