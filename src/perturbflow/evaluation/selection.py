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

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from perturbflow.baselines.linear import pearson
from perturbflow.baselines.simple import Key

logger = logging.getLogger(__name__)

CHOSEN = "perturbflow"
SCORE_COLUMNS = ["split", "predictor", "context", "perturbation", "pearson_delta"]
NO_VALIDATION = "no validation perturbations in this split"


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


def add_chosen_predictor(
    predictions: Mapping[str, Any], scores: Sequence[pd.DataFrame], sources: pd.DataFrame
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Add each split's ``perturbflow`` prediction: its candidate best on validation.

    Args:
        predictions: ``<split>/<predictor>`` -> test prediction (or its load function).
        scores: Validation rows of the candidates (:data:`SCORE_COLUMNS`), any number of
            tables; a candidate without rows is never chosen over a scored one.
        sources: The baselines' prediction-source table (``split``, ``predictor``,
            ``context``, ``perturbation``, ``source``).

    Returns:
        The predictions plus ``<split>/perturbflow`` (the chosen one's, not a copy), the
        selection table (:func:`choose_by_validation`) and ``sources`` plus the
        ``perturbflow`` rows (``<chosen>:<its source>``; a model's name alone, its
        encodings being in its own table).
    """
    frames = [f for f in scores if len(f)]
    table_in = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    splits = sorted({k.split("/")[0] for k in predictions})
    candidates: dict[str, list[str]] = {split: [] for split in splits}
    for key in predictions:  # a constant zero delta has no pearson_delta to compare
        split, name = key.split("/", 1)
        if name != "control":
            candidates[split].append(name)
    table = choose_by_validation(table_in, splits, candidates)
    out = dict(predictions)
    rows = []
    for row in table[table["chosen"]].itertuples():
        out[f"{row.split}/{CHOSEN}"] = predictions[f"{row.split}/{row.predictor}"]
        logger.info(
            "perturbflow, split %s: %s (%s, validation pearson_delta %.3f)",
            row.split,
            row.predictor,
            row.reason,
            row.validation_pearson_delta,
        )
        own = sources[sources["split"] == row.split]
        chosen = own[own["predictor"] == row.predictor]
        if len(chosen):
            rows.append(
                chosen.assign(predictor=CHOSEN, source=row.predictor + ":" + chosen["source"])
            )
        elif len(own):  # a model: one row per test key of the split, its name as source
            keys = own[own["predictor"] == own["predictor"].iloc[0]]
            rows.append(keys.assign(predictor=CHOSEN, source=row.predictor))
    return out, table, pd.concat([sources, *rows], ignore_index=True)
