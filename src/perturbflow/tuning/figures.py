"""Plotly figures of a study (``optuna.visualization``), for kedro viz and the reports.

Optuna's plots need enough finished trials (parameter importances: two complete trials
with at least one parameter that varies); with fewer, a figure with a note saying what is
missing is returned instead of failing the pipeline at its last step.
"""

from __future__ import annotations

import logging

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

logger = logging.getLogger(__name__)


def _note(title: str, text: str) -> go.Figure:
    figure = go.Figure()
    figure.update_layout(
        title=title,
        xaxis={"visible": False},
        yaxis={"visible": False},
        annotations=[{"text": text, "showarrow": False, "font": {"size": 14}}],
    )
    return figure


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def optimization_history(study: optuna.Study) -> go.Figure:
    """Objective value of every complete trial and the best value so far."""
    if not _complete(study):
        return _note("Optimization History Plot", "No complete trial yet.")
    return optuna.visualization.plot_optimization_history(study)


def _varying_params(study: optuna.Study) -> list[str]:
    values: dict[str, set] = {}
    for trial in _complete(study):
        for name, value in trial.params.items():
            values.setdefault(name, set()).add(repr(value))
    return [name for name, seen in values.items() if len(seen) > 1]


def param_importances(study: optuna.Study, *, seed: int = 0) -> go.Figure:
    """Importance of each parameter for the objective (fANOVA, optuna's default evaluator).

    Args:
        study: The study.
        seed: Seed of the fANOVA random forest.
    """
    if len(_complete(study)) < 2 or not _varying_params(study):
        return _note(
            "Hyperparameter Importances",
            "Needs at least two complete trials with a parameter that varies.",
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    return optuna.visualization.plot_param_importances(
        study, evaluator=evaluator, params=_varying_params(study)
    )


def parallel_coordinates(study: optuna.Study) -> go.Figure:
    """Every complete trial as a line through its parameter values and objective."""
    if not _complete(study):
        return _note("Parallel Coordinate Plot", "No complete trial yet.")
    return optuna.visualization.plot_parallel_coordinate(study)


def study_figures(study: optuna.Study, *, seed: int = 0) -> dict[str, go.Figure]:
    """The three figures of the ``tune`` pipeline, keyed by short name."""
    return {
        "history": optimization_history(study),
        "importances": param_importances(study, seed=seed),
        "parallel": parallel_coordinates(study),
    }
