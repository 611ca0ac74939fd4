"""The perturbflow predictor: per split, the candidate best on validation perturbations."""

from __future__ import annotations

import numpy as np
import pandas as pd

from perturbflow.baselines import pearson
from perturbflow.evaluation.selection import (
    NO_VALIDATION,
    add_chosen_predictor,
    choose_by_validation,
    validation_scores,
)


def _scores(rows):
    return pd.DataFrame(
        [
            {"split": s, "predictor": p, "context": "c", "perturbation": k, "pearson_delta": v}
            for s, p, k, v in rows
        ]
    )


def test_the_best_mean_validation_score_is_chosen_and_a_tie_goes_to_the_earlier():
    scores = _scores(
        [
            ("a", "linear", "x", 0.9),
            ("a", "linear", "y", 0.1),  # mean 0.5
            ("a", "st", "x", 0.6),
            ("a", "st", "y", 0.6),  # mean 0.6: chosen
            ("b", "linear", "x", 0.4),
            ("b", "st", "x", 0.4),  # a tie: the earlier candidate
        ]
    )
    table = choose_by_validation(scores, ["a", "b"], {"a": ["linear", "st"], "b": ["linear", "st"]})
    chosen = table[table["chosen"]].set_index("split")["predictor"]
    assert chosen.to_dict() == {"a": "st", "b": "linear"}
    a = table[table["split"] == "a"].set_index("predictor")
    assert a.loc["linear", "validation_pearson_delta"] == 0.5
    assert a.loc["st", "n_validation"] == 2


def test_a_candidate_without_validation_scores_is_never_chosen_over_a_scored_one():
    scores = _scores([("a", "linear", "x", -0.2)])
    table = choose_by_validation(scores, ["a"], {"a": ["st_lora", "linear"]})
    row = table.set_index("predictor")
    assert row.loc["linear", "chosen"] and not row.loc["st_lora", "chosen"]
    assert np.isnan(row.loc["st_lora", "validation_pearson_delta"])


def test_a_split_without_validation_takes_the_st_model_and_says_so():
    empty = _scores([])
    table = choose_by_validation(empty, ["a"], {"a": ["linear", "st"]})
    row = table.set_index("predictor").loc["st"]
    assert row["chosen"] and row["reason"] == NO_VALIDATION


def test_validation_scores_are_pearson_of_mean_deltas():
    rng = np.random.default_rng(0)
    real = {("c", "p"): rng.normal(size=20), ("c", "q"): rng.normal(size=20)}
    predicted = {("c", "p"): 2 * real[("c", "p")] + 1, ("c", "q"): -real[("c", "q")]}
    frame = validation_scores("s", "m", predicted, real).set_index("perturbation")
    assert np.isclose(frame.loc["p", "pearson_delta"], 1.0)
    assert np.isclose(frame.loc["q", "pearson_delta"], -1.0)
    assert pearson(np.ones(3), np.arange(3.0)) == 0.0  # constant: no correlation


def test_the_chosen_prediction_is_added_and_its_sources_named():
    predictions = {"a/linear": "L", "a/st": "S", "a/control": "C", "b/linear": "L2"}
    scores = [
        _scores([("a", "linear", "x", 0.2), ("a", "st", "x", 0.7), ("b", "linear", "x", 0.1)])
    ]
    sources = pd.DataFrame(
        {
            "split": ["a", "a", "b"],
            "predictor": ["linear", "linear", "linear"],
            "context": ["c", "c", "c"],
            "perturbation": ["x", "y", "x"],
            "source": ["components", "fallback:perturbation_mean", "other_contexts"],
        }
    )
    out, table, with_chosen = add_chosen_predictor(predictions, scores, sources)
    assert out["a/perturbflow"] == "S" and out["b/perturbflow"] == "L2"  # the same object
    assert set(table.loc[table["chosen"], "predictor"]) == {"st", "linear"}
    rows = with_chosen[with_chosen["predictor"] == "perturbflow"].set_index(
        ["split", "perturbation"]
    )
    assert rows.loc[("a", "x"), "source"] == "st" and rows.loc[("a", "y"), "source"] == "st"
    assert rows.loc[("b", "x"), "source"] == "linear:other_contexts"
