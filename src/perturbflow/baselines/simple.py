"""Baseline predictors: the effect each one predicts for a held-out (context, perturbation).

Every predictor returns, per held-out ``(context, perturbation)``, a predicted delta (the
shift from the context's control mean) and the *source* of that prediction, so a report
can say which perturbations a baseline really predicted and which fell back to another
rule. Only training effects (:class:`~perturbflow.splits.data.TrainingEffects`) are
read; held-out cells never are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from perturbflow.splits.data import SplitCells
from perturbflow.splits.effects import TrainingEffects

Key = tuple[str, str]

FALLBACK = "fallback:perturbation_mean"


@dataclass(frozen=True)
class PredictedEffect:
    """A predicted delta and where it came from."""

    delta: np.ndarray
    source: str


EffectPredictor = Callable[[SplitCells, TrainingEffects, Sequence[Key]], dict[Key, PredictedEffect]]


def predict_control(
    data: SplitCells, effects: TrainingEffects, keys: Sequence[Key]
) -> dict[Key, PredictedEffect]:
    """No effect: every perturbation looks like its context's controls."""
    zero = np.zeros(len(data.genes))
    return {k: PredictedEffect(zero, "no_effect") for k in keys}


def predict_perturbation_mean(
    data: SplitCells, effects: TrainingEffects, keys: Sequence[Key]
) -> dict[Key, PredictedEffect]:
    """The mean training delta over all training perturbations (cell-eval's baseline).

    Uses the training perturbations of the same context when it has any (few-shot), and
    those of every training context otherwise (zero-shot).
    """
    out = {}
    for context, perturbation in keys:
        own = context in effects.contexts()
        source = "mean_of_context" if own else "mean_of_all_contexts"
        out[(context, perturbation)] = PredictedEffect(effects.mean_delta(context), source)
    return out


def predict_context_mean(
    data: SplitCells, effects: TrainingEffects, keys: Sequence[Key]
) -> dict[Key, PredictedEffect]:
    """The perturbation's mean training delta in the other contexts where it was seen.

    A perturbation never trained in another context falls back to ``perturbation_mean``
    (source ``fallback:perturbation_mean``).
    """
    index = effects.index()
    out = {}
    for context, perturbation in keys:
        rows = [
            index[(c, perturbation)]
            for c in effects.contexts()
            if c != context and (c, perturbation) in index
        ]
        if rows:
            out[(context, perturbation)] = PredictedEffect(
                effects.deltas[rows].mean(axis=0), f"mean_over_{len(rows)}_contexts"
            )
        else:
            out[(context, perturbation)] = PredictedEffect(effects.mean_delta(context), FALLBACK)
    return out
