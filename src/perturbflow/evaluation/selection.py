"""The ``perturbflow`` predictor: per split, the predictor that scores best on validation.

Every candidate (the baselines, the ST model) predicts the split's *validation*
perturbations; each prediction's mean delta is compared with the real validation cells'
(pearson_delta: Pearson correlation over genes of predicted and real mean shift from the
context's control mean, the figure the linear baseline's rank is chosen on). Per split,
the candidate with the best mean over the validation perturbations becomes the split's
``perturbflow`` prediction of the test perturbations, and the table says which it was and
why. No test cell is read to choose. A split without validation perturbations takes the
ST model when it has one (else the first candidate), and says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from perturbflow.baselines.simple import Key

CHOSEN = "perturbflow"
SCORE_COLUMNS = ["split", "predictor", "context", "perturbation", "pearson_delta"]
NO_VALIDATION = "no validation perturbations in this split"


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors (0 when either is constant)."""
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def validation_scores(
    split: str,
    predictor: str,
    predicted: Mapping[Key, np.ndarray],
    real: Mapping[Key, np.ndarray],
) -> pd.DataFrame:
    """pearson_delta of each validation key's predicted mean delta against the real one.

    Args:
        split: The split's name.
        predictor: The candidate's name.
        predicted: Predicted mean delta per validation key.
        real: Real mean delta per validation key (:func:`perturbflow.baselines.real_deltas`).

    Returns:
        One row per key (:data:`SCORE_COLUMNS`).
    """
    rows = [
        {
            "split": split,
            "predictor": predictor,
            "context": key[0],
            "perturbation": key[1],
            "pearson_delta": pearson(np.asarray(predicted[key], np.float64), real[key]),
        }
        for key in real
    ]
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def choose_by_validation(
    scores: pd.DataFrame, splits: Sequence[str], candidates: Mapping[str, Sequence[str]]
) -> pd.DataFrame:
    """Per split, every candidate's mean validation pearson_delta and the one chosen.

    Args:
        scores: Validation rows of every candidate (:data:`SCORE_COLUMNS`).
        splits: The evaluated splits.
        candidates: Per split, the predictors with test predictions, in table order
            (a tie goes to the earlier one).

    Returns:
        One row per split and candidate: ``validation_pearson_delta`` (mean; NaN without
        validation rows), ``n_validation``, ``chosen`` and ``reason``.
    """
    rows = []
    if not len(scores):
        scores = pd.DataFrame(columns=SCORE_COLUMNS)
    for split in splits:
        names = list(candidates.get(split, []))
        own = scores[scores["split"] == split]
        means = {n: own.loc[own["predictor"] == n, "pearson_delta"] for n in names}
        scored = {n: float(v.mean()) for n, v in means.items() if len(v)}
        if scored:
            best = max(scored.values())
            chosen = next(n for n in names if n in scored and scored[n] == best)
            reason = "best mean validation pearson_delta"
        else:
            chosen = "st" if "st" in names else (names[0] if names else None)
            reason = NO_VALIDATION
        for name in names:
            rows.append(
                {
                    "split": split,
                    "predictor": name,
                    "validation_pearson_delta": scored.get(name, float("nan")),
                    "n_validation": int(len(means[name])),
                    "chosen": name == chosen,
                    "reason": reason if name == chosen else "",
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "split",
            "predictor",
            "validation_pearson_delta",
            "n_validation",
            "chosen",
            "reason",
        ],
    )
