"""A model's predicted mean shift of a split's validation perturbations.

What the evaluation's ``perturbflow`` predictor compares candidates on
(:mod:`perturbflow.evaluation.selection`): the real deltas are
:func:`perturbflow.baselines.real_deltas` of the same perturbations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from perturbflow.baselines import real_deltas
from perturbflow.evaluation.selection import validation_scores
from perturbflow.models.inference.predict import Key, Runs, as_runs, predict_ensemble
from perturbflow.splits.data import SplitCells


def predict_mean_deltas(
    run: Runs, data: SplitCells, *, seed: int, label: str = "val"
) -> dict[Key, np.ndarray]:
    """The predicted mean delta of every ``label`` perturbation of a split.

    Each perturbation is predicted from its context's control cells (as many cells as the
    real ones); its delta is the predicted cells' mean minus all the context's control
    cells' mean, as the real deltas of :func:`perturbflow.baselines.real_deltas`. What
    the ``perturbflow`` predictor compares candidates on (validation perturbations).
    With the runs of a seed ensemble, their averaged cells'
    (:func:`~perturbflow.models.inference.predict.predict_ensemble`).

    Returns:
        ``(context, perturbation)`` -> mean delta; empty when the split has none.
    """
    keys = data.heldout_keys(label)
    if not keys:
        return {}
    cells = predict_ensemble(as_runs(run), data, keys, seed=seed, allow_unknown=True).cells
    return {k: cells[k].mean(axis=0) - data.control_mean(k[0]) for k in keys}


def model_validation_scores(
    run: Runs, data: SplitCells, *, split: str, predictor: str, seed: int
) -> pd.DataFrame:
    """A model's pearson_delta on each validation perturbation of a split.

    The candidate row set the ``perturbflow`` predictor chooses on
    (:func:`perturbflow.evaluation.selection.validation_scores` of
    :func:`predict_mean_deltas` against :func:`perturbflow.baselines.real_deltas`), for a
    trained, finetuned or ensembled ``run`` named ``predictor``; empty without validation
    perturbations.
    """
    predicted = predict_mean_deltas(run, data, seed=seed, label="val")
    return validation_scores(split, predictor, predicted, real_deltas(data, "val"))
