"""cell-eval scoring, aggregation and normalised scores on a generated screen."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perturbflow.evaluation import (
    add_normalised_scores,
    aggregate_metrics,
    predict_context_mean,
    predict_control,
    predicted_adata,
    real_adata,
    score_predictions,
)
from perturbflow.splits import split_cells, training_effects
from tests.synthetic import COLUMNS, make_screen, split_table

N_GENES = 60


@pytest.fixture(scope="module")
def zero_shot():
    rng = np.random.default_rng(5)
    # strong, distinct effects on a few genes each: real DE genes exist
    specific = {}
    for i in range(4):
        delta = np.zeros(N_GENES)
        delta[rng.choice(N_GENES, 8, replace=False)] = rng.choice([-1.0, 1.0], 8)
        specific[f"p{i}"] = delta
    effects = {(c, p): d for c in ("A", "B", "C") for p, d in specific.items()}
    adata = make_screen(effects, n_genes=N_GENES, contexts=["A", "B", "C"], noise=0.3)
    table = split_table(adata, {"z": {("C", "*"): "test"}})
    data = split_cells(adata, table, "z", genes=list(adata.var_names))
    return data, training_effects(data)


def test_scores_transfer_above_no_effect_and_ceiling_is_high(zero_shot):
    data, effects = zero_shot
    keys = [("ds.C", f"p{i}") for i in range(4)]
    real = real_adata(data, "test", COLUMNS)
    frames = []
    for name, fn in [("control", predict_control), ("context_mean", predict_context_mean)]:
        pred = predicted_adata(data, "test", fn(data, effects, keys), COLUMNS, seed=0)
        scored = score_predictions(real, pred, COLUMNS, profile="minimal", num_threads=1, seed=0)
        frames.append(scored.assign(split="z", predictor=name))
    ceiling = score_predictions(real, None, COLUMNS, profile="minimal", num_threads=1, seed=0)
    frames.append(ceiling.assign(split="z", predictor="ceiling"))
    per = pd.concat(frames, ignore_index=True)
    assert set(per["perturbation"]) == {"p0", "p1", "p2", "p3"}
    assert set(per["context"]) == {"ds.C"}

    agg = aggregate_metrics(per).set_index("predictor")
    for metric in ("pearson_delta", "mse", "mae", "discrimination_score_l1", "overlap_at_N"):
        assert metric in agg.columns
    assert agg.loc["context_mean", "pearson_delta"] > 0.9
    assert agg.loc["context_mean", "discrimination_score_l1"] == pytest.approx(1.0)
    assert agg.loc["context_mean", "mse"] < agg.loc["control", "mse"]
    assert agg.loc["context_mean", "overlap_at_N"] > 0.5
    assert agg.loc["ceiling", "pearson_delta"] > 0.9
    assert (agg["n_perturbations"] == 4).all()

    scored = add_normalised_scores(agg.reset_index(), reference="control").set_index("predictor")
    assert scored.loc["control", "score_vs_control"] == pytest.approx(0.0)
    assert scored.loc["context_mean", "score_vs_control"] > 0.3


def test_ceiling_spearman_brown_correction():
    per = pd.DataFrame(
        {
            "split": ["s", "s"],
            "predictor": ["ceiling", "ceiling"],
            "context": ["c", "c"],
            "perturbation": ["a", "b"],
            "pearson_delta": [0.5, 0.7],
            "mse": [0.2, 0.4],
        }
    )
    agg = aggregate_metrics(per)
    r = 0.6
    assert agg.loc[0, "pearson_delta"] == pytest.approx(2 * r / (1 + r))
    assert agg.loc[0, "mse"] == pytest.approx(0.3)  # error metrics: raw half-split mean
