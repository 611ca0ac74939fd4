"""Baselines on generated screens with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from perturbflow.baselines.linear import predict_linear_with
from perturbflow.evaluation import (
    predict_context_mean,
    predict_control,
    predict_perturbation_mean,
    predicted_adata,
    real_adata,
    select_and_fit_linear,
)
from perturbflow.predictions import clip_keeping_mean, shifted_controls, shifted_mean_delta
from perturbflow.splits import split_cells, training_effects
from tests.synthetic import COLUMNS, make_screen, split_table

N_GENES = 40


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture
def shared_shift_screen():
    """Every perturbation = one shared shift + a small specific part."""
    rng = np.random.default_rng(1)
    shared = rng.normal(0, 0.5, N_GENES)
    effects = {("A", f"p{i}"): shared + rng.normal(0, 0.05, N_GENES) for i in range(8)}
    adata = make_screen(effects, n_genes=N_GENES, contexts=["A"])
    table = split_table(adata, {"s": {("A", "p6"): "test", ("A", "p7"): "val"}})
    return adata, table, shared


def test_perturbation_mean_recovers_planted_shared_shift(shared_shift_screen):
    adata, table, shared = shared_shift_screen
    data = split_cells(adata, table, "s", genes=list(adata.var_names))
    effects = training_effects(data)
    pred = predict_perturbation_mean(data, effects, [("ds.A", "p6")])[("ds.A", "p6")]
    assert pred.source == "mean_of_context"
    assert _pearson(pred.delta, shared) > 0.98
    np.testing.assert_allclose(pred.delta, shared, atol=0.05)


def test_control_predicts_no_effect(shared_shift_screen):
    adata, table, _ = shared_shift_screen
    data = split_cells(adata, table, "s", genes=list(adata.var_names))
    pred = predict_control(data, training_effects(data), [("ds.A", "p6")])
    assert not pred[("ds.A", "p6")].delta.any()


def test_training_effects_ignore_heldout_cells(shared_shift_screen):
    adata, table, _ = shared_shift_screen
    data = split_cells(adata, table, "s", genes=list(adata.var_names))
    effects = training_effects(data)
    assert ("ds.A", "p6") not in effects.keys and ("ds.A", "p7") not in effects.keys
    assert len(effects.keys) == 6


def test_context_mean_transfers_effect_from_other_contexts():
    rng = np.random.default_rng(2)
    specific = {f"p{i}": rng.normal(0, 0.5, N_GENES) for i in range(4)}
    effects = {(c, p): d for c in ("A", "B", "C") for p, d in specific.items()}
    adata = make_screen(effects, n_genes=N_GENES, contexts=["A", "B", "C"])
    table = split_table(adata, {"z": {("C", "*"): "test"}})
    data = split_cells(adata, table, "z", genes=list(adata.var_names))
    eff = training_effects(data)
    preds = predict_context_mean(data, eff, [("ds.C", p) for p in specific])
    for p, truth in specific.items():
        assert preds[("ds.C", p)].source == "mean_over_2_contexts"
        assert _pearson(preds[("ds.C", p)].delta, truth) > 0.98
    # perturbation_mean cannot tell the perturbations apart
    pm = predict_perturbation_mean(data, eff, [("ds.C", p) for p in specific])
    assert pm[("ds.C", "p0")].source == "mean_of_all_contexts"
    assert np.mean([_pearson(pm[("ds.C", p)].delta, t) for p, t in specific.items()]) < 0.9


def test_context_mean_falls_back_for_unseen_perturbation(shared_shift_screen):
    adata, table, _ = shared_shift_screen
    data = split_cells(adata, table, "s", genes=list(adata.var_names))
    pred = predict_context_mean(data, training_effects(data), [("ds.A", "p6")])
    assert pred[("ds.A", "p6")].source == "fallback:perturbation_mean"


def test_linear_recovers_additive_double_and_chooses_rank_on_validation():
    rng = np.random.default_rng(3)
    singles = {g: rng.normal(0, 0.6, N_GENES) for g in ("a", "b", "c", "d", "e")}
    effects = {("A", g): d for g, d in singles.items()}
    for x, y in [("a", "b"), ("c", "d"), ("a", "c"), ("b", "d"), ("a", "e"), ("b", "e")]:
        effects[("A", f"{x}+{y}")] = singles[x] + singles[y]
    adata = make_screen(effects, n_genes=N_GENES, contexts=["A"])
    table = split_table(adata, {"s": {("A", "a+e"): "test", ("A", "b+e"): "val"}})
    data = split_cells(adata, table, "s", genes=list(adata.var_names))
    eff = training_effects(data)
    model, evidence, report = select_and_fit_linear(data, eff, ranks=[1, 2, 4, 8], ridge=0.01)
    assert report["n_validation_perturbations"] == 1
    assert report["chosen_rank"] in (1, 2, 4, 8)
    assert report["training_columns_per_source"]["components"] == 4
    pred = predict_linear_with(model, evidence, [("ds.A", "a+e")])[("ds.A", "a+e")]
    assert pred.source == "components"
    assert _pearson(pred.delta, singles["a"] + singles["e"]) > 0.95
    # the validation score of the chosen rank is the best one
    scores = report["validation_pearson_delta_by_rank"]
    assert scores[str(report["chosen_rank"])] == max(scores.values())


def test_linear_without_evidence_falls_back_and_says_so(shared_shift_screen):
    adata, table, _ = shared_shift_screen
    data = split_cells(adata, table, "s", genes=list(adata.var_names))
    model, evidence, _ = select_and_fit_linear(data, training_effects(data), ranks=[2], ridge=0.1)
    pred = predict_linear_with(model, evidence, [("ds.A", "p6")])[("ds.A", "p6")]
    assert pred.source == "fallback:perturbation_mean"


def test_cell_level_predictions_have_cell_eval_shape(shared_shift_screen):
    adata, table, _ = shared_shift_screen
    data = split_cells(adata, table, "s", genes=list(adata.var_names))
    keys = [("ds.A", "p6")]
    effects = predict_perturbation_mean(data, training_effects(data), keys)
    real = real_adata(data, "test", COLUMNS)
    pred = predicted_adata(data, "test", effects, COLUMNS, seed=0)
    assert list(pred.var_names) == list(real.var_names)
    assert pred.obs["pert"].value_counts().to_dict() == real.obs["pert"].value_counts().to_dict()
    assert set(real.obs["pert"]) == {"ctrl", "p6"}
    assert (pred.X >= 0).all()
    # predicted cells are distinct control cells plus a shift, not one repeated vector
    cells = pred.X[(pred.obs["pert"] == "p6").to_numpy()]
    assert len(np.unique(cells.round(5), axis=0)) == len(cells)
    # the real controls of the context are carried into the prediction unchanged
    ctrl_pred = pred.X[(pred.obs["pert"] == "ctrl").to_numpy()]
    ctrl_real = real.X[(real.obs["pert"] == "ctrl").to_numpy()]
    np.testing.assert_array_equal(ctrl_pred, ctrl_real)
    # same seed, same cells
    again = predicted_adata(data, "test", effects, COLUMNS, seed=0)
    np.testing.assert_array_equal(again.X, pred.X)


def test_zero_shot_controls_are_inputs_but_not_training(shared_shift_screen):
    rng = np.random.default_rng(4)
    effects = {(c, "p0"): rng.normal(0, 0.3, N_GENES) for c in ("A", "B")}
    adata = make_screen(effects, n_genes=N_GENES, contexts=["A", "B"])
    table = split_table(adata, {"z": {("B", "*"): "test"}})
    data = split_cells(adata, table, "z", genes=list(adata.var_names))
    eff = training_effects(data)
    assert set(eff.control_means) == {"ds.A"}  # B's controls are not training data
    assert len(data.control_rows("ds.B")) == 120  # but they are B's prediction inputs


def _program_screen(targets: list[str], *, seed: int):
    """Controls carry one gene program per target (the target co-varies with its program);
    knocking a target down lowers its whole program: delta = -2 * loading. Programs
    overlap (they draw on one pool of 12 pathway genes), as real pathways do."""
    rng = np.random.default_rng(seed)
    n_genes, n_ctrl, n_cells = 40, 400, 80
    genes = targets + [f"g{i}" for i in range(n_genes - len(targets))]
    pool = np.arange(len(targets), len(targets) + 12)
    loadings = {}
    for i, t in enumerate(targets):
        load = np.zeros(n_genes)
        load[rng.choice(pool, 6, replace=False)] = rng.uniform(0.5, 1, 6)
        load[i] = 1.0
        loadings[t] = load
    level = 3.0
    factors = rng.normal(0, 0.5, (n_ctrl, len(targets)))
    ctrl = (
        level
        + factors @ np.vstack([loadings[t] for t in targets])
        + rng.normal(0, 0.05, (n_ctrl, n_genes))
    )
    blocks, perts = [ctrl], ["ctrl"] * n_ctrl
    for t in targets:
        blocks.append(level - 2 * loadings[t] + rng.normal(0, 0.05, (n_cells, n_genes)))
        perts += [t] * n_cells
    import anndata as ad
    import pandas as pd

    X = np.clip(np.vstack(blocks), 0, None).astype(np.float32)
    obs = pd.DataFrame(
        {"pert": perts, "celltype": "A", "dataset": "ds"},
        index=[f"c{i}" for i in range(len(perts))],
    )
    adata = ad.AnnData(X=X, obs=obs)
    adata.var_names = genes
    adata.obsm["X_hvg"] = X.copy()
    return adata, loadings


def test_linear_learns_the_sign_of_target_signatures():
    targets = ["T0", "T1", "T2", "T3", "T4", "T5"]
    adata, loadings = _program_screen(targets, seed=7)
    table = split_table(adata, {"s": {("A", "T5"): "test", ("A", "T4"): "val"}})
    data = split_cells(adata, table, "s", genes=list(adata.var_names))
    model, evidence, report = select_and_fit_linear(
        data, training_effects(data), ranks=[4, 8], ridge=0.1
    )
    assert report["training_columns_per_source"]["target_signature"] == 4
    pred = predict_linear_with(model, evidence, [("ds.A", "T5")])[("ds.A", "T5")]
    assert pred.source == "target_signature"
    truth = -2 * loadings["T5"]
    base = training_effects(data).mean_delta("ds.A")  # the perturbation_mean part
    # knockdown: the specific part points against the signature, like the truth
    assert _pearson(pred.delta - base, truth) > 0.4  # T5 itself is outside every training delta
    assert _pearson(pred.delta, truth) > _pearson(base, truth) + 0.15


def test_target_signature_without_training_support_is_not_used():
    targets = ["T0", "T1"]
    adata, _ = _program_screen(targets, seed=8)
    table = split_table(adata, {"s": {("A", "T1"): "test"}})
    data = split_cells(adata, table, "s", genes=list(adata.var_names))
    model, evidence, report = select_and_fit_linear(
        data, training_effects(data), ranks=[2], ridge=0.1
    )
    assert "target_signature" in report["sources_unused_for_lack_of_training_support"]
    pred = predict_linear_with(model, evidence, [("ds.A", "T1")])[("ds.A", "T1")]
    assert pred.source == "fallback:perturbation_mean"


def test_predicted_cells_centre_the_control_draw_on_the_context_mean(shared_shift_screen):
    adata, table, _ = shared_shift_screen
    data = split_cells(adata, table, "s", genes=list(adata.var_names))
    effects = training_effects(data)
    key = ("ds.A", "p6")
    pred = predict_perturbation_mean(data, effects, [key])
    cells = predicted_adata(data, "test", pred, COLUMNS, seed=3)
    own = cells[cells.obs[COLUMNS.pert_col] == "p6"].X
    control = data.X[data.control_rows("ds.A")].mean(axis=0)
    # whichever controls were drawn, the predicted population's mean is control + delta
    np.testing.assert_allclose(own.mean(axis=0), control + pred[key].delta, atol=1e-5)
    assert own.std(axis=0).mean() > 0.03  # the drawn cells keep their spread


def test_clipping_at_zero_keeps_each_genes_mean():
    rng = np.random.default_rng(0)
    # sparse log1p-like cells moved down: a plain clip would raise the means back up
    sample = np.where(rng.random((80, 40)) < 0.7, 0.0, rng.gamma(2.0, 1.0, (80, 40)))
    moved = (sample - rng.uniform(0.0, 1.5, 40)).astype(np.float32)
    target = np.clip(moved.mean(axis=0, dtype=np.float64), 0.0, None)
    plain = np.clip(moved, 0.0, None)
    assert np.abs(plain.mean(axis=0) - target).max() > 0.1
    kept = clip_keeping_mean(moved, genes_per_block=7)
    assert kept.dtype == np.float32 and (kept >= 0).all()
    np.testing.assert_allclose(kept.mean(axis=0), target, atol=1e-5)
    # a gene whose mean is negative is zero everywhere; one above zero is left as it was
    column = np.array([[-1.0, 1.0], [-2.0, 2.0], [0.5, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(clip_keeping_mean(column), [[0, 1], [0, 2], [0, 3]])
    # the same delta from two draws of controls: the same predicted population mean
    population = sample.mean(axis=0)
    delta = -np.full(40, 0.8)
    draws = [shifted_controls(sample[rng.choice(80, 50)], population, delta) for _ in range(2)]
    np.testing.assert_allclose(draws[0].mean(axis=0), draws[1].mean(axis=0), atol=1e-5)
    # ... which is what a baseline's validation figure is computed from
    expected = population + shifted_mean_delta(population, delta)
    np.testing.assert_allclose(draws[0].mean(axis=0), expected, atol=1e-5)
