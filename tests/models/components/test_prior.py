"""The response prior: cross-fitted for training keys, the baselines' answer for the others."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from perturbflow.baselines import (
    predict_context_mean,
    predict_linear_with,
    select_and_fit_linear,
)
from perturbflow.exceptions import InputError
from perturbflow.models.components.prior import (
    PriorSettings,
    fit_response_prior,
    load_response_prior,
)
from perturbflow.models.components.prior_scope import out_of_context_keys
from perturbflow.models.inference.predict import predict_cells
from perturbflow.models.runs.run_dir import load_run
from perturbflow.models.training.train import train_st
from perturbflow.params import PriorParams
from perturbflow.splits import split_cells, training_effects
from tests.models.support import loader_params, make_split, training_params, write_screen
from tests.synthetic import COLUMNS, make_screen, split_table

N_GENES = 30
SETTINGS = PriorSettings(folds=4, ranks=(3,), ridge=0.1, seed=0)
SETTINGS_PARAMS = PriorParams(folds=4, ranks=[3], ridge=0.1)


def _effects(seed: int = 0, boost: float = 0.0) -> dict:
    """Eight perturbations that act the same in contexts A and B; ``boost`` changes (A, p0)."""
    rng = np.random.default_rng(seed)
    specific = {f"p{i}": rng.normal(0, 0.6, N_GENES) for i in range(8)}
    out = {(c, p): d.copy() for c in ("A", "B") for p, d in specific.items()}
    out[("A", "p0")] += boost * np.linspace(-1, 1, N_GENES)
    return out


def _data(boost: float = 0.0, labels=None):
    adata = make_screen(_effects(boost=boost), n_genes=N_GENES, contexts=["A", "B"])
    labels = labels or {("A", "p6"): "test", ("A", "p7"): "val"}
    table = split_table(adata, {"s": labels})
    return split_cells(adata, table, "s", genes=list(adata.var_names))


def _fit(data, kind="linear"):
    return fit_response_prior(
        data, training_effects(data), kind=kind, control_label="ctrl", settings=SETTINGS
    )


def test_a_training_keys_prior_never_sees_its_own_cells():
    key = ("ds.A", "p0")
    plain, boosted = _data(), _data(boost=3.0)
    prior_plain, prior_boosted = _fit(plain), _fit(boosted)
    oof_plain, _ = prior_plain.deltas([key], plain, out_of_fold=True)
    oof_boosted, _ = prior_boosted.deltas([key], boosted, out_of_fold=True)
    # fitted without its fold: the change of (A, p0)'s own cells does not reach its prior
    np.testing.assert_allclose(oof_plain, oof_boosted, atol=1e-5)
    full_plain, _ = prior_plain.deltas([key], plain)
    full_boosted, _ = prior_boosted.deltas([key], boosted)
    assert np.abs(full_plain - full_boosted).max() > 0.05  # the full fit does see them
    # every training perturbation has an out-of-fold prior, the held-out ones do not
    trained = {k for k in training_effects(plain).keys}
    assert set(prior_plain.out_of_fold) == trained
    assert ("ds.A", "p6") not in prior_plain.out_of_fold


def test_heldout_keys_get_the_linear_baseline_fitted_on_all_training_keys():
    data = _data()
    effects = training_effects(data)
    prior = _fit(data)
    model, evidence, _ = select_and_fit_linear(data, effects, ranks=[3], ridge=0.1)
    key = ("ds.A", "p6")
    expected = predict_linear_with(model, evidence, [key])[key]
    deltas, sources = prior.deltas([key], data, out_of_fold=True)
    np.testing.assert_allclose(deltas[0], expected.delta, rtol=1e-5, atol=1e-6)
    assert sources == [f"linear:{expected.source}"] and expected.source == "other_contexts"


def test_a_heldout_context_gets_the_context_transfer():
    labels = {("B", "*"): "test", ("A", "p7"): "val"}
    data = _data(labels=labels)
    effects = training_effects(data)
    keys = [("ds.B", f"p{i}") for i in range(8)]
    expected = predict_context_mean(data, effects, keys)
    for kind in ("linear", "context_transfer"):
        deltas, sources = _fit(data, kind).deltas(keys, data)
        for row, key in enumerate(keys):
            np.testing.assert_allclose(deltas[row], expected[key].delta, rtol=1e-5, atol=1e-6)
        # p7 is trained nowhere (validation in A): the mean of every training response
        assert sources == ["context_transfer"] * 7 + ["context_mean"]


def test_the_control_has_no_prior_and_none_fits_nothing():
    data = _data()
    deltas, sources = _fit(data).deltas([("ds.A", "ctrl")], data)
    assert not deltas.any() and sources == ["control"]
    assert _fit(data, "none") is None
    with pytest.raises(ValueError, match="unknown response prior"):
        _fit(data, "mean")
    with pytest.raises(InputError, match="folds"):
        fit_response_prior(
            data,
            training_effects(data),
            kind="linear",
            control_label="ctrl",
            settings=dataclasses.replace(SETTINGS, folds=1),
        )


def test_a_saved_prior_reads_back_the_same(tmp_path):
    data = _data()
    prior = _fit(data)
    prior.save(tmp_path)
    back = load_response_prior(tmp_path, "linear", prior.effects, "ctrl")
    keys = [("ds.A", "p0"), ("ds.A", "p6"), ("ds.B", "p3")]
    for out_of_fold in (True, False):
        np.testing.assert_allclose(
            back.deltas(keys, data, out_of_fold=out_of_fold)[0],
            prior.deltas(keys, data, out_of_fold=out_of_fold)[0],
        )
    assert back.report["linear"]["chosen_rank"] == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no response_prior.json"):
        load_response_prior(empty, "linear", prior.effects, "ctrl")


def _trained(tmp_path, max_steps: int, **model):
    """A tiny ST run with a linear prior on a screen of high expression (no clipping)."""
    adata = make_screen(_effects(), n_genes=N_GENES, contexts=["A", "B"], baseline=6.0)
    table = split_table(adata, {"s": {("A", "p6"): "test", ("A", "p7"): "val"}})
    split = make_split(adata, write_screen(adata, tmp_path / "screen.h5ad"), table, "s")
    training = training_params(
        splits=["s"],
        max_steps=max_steps,
        val_every_n_steps=2,
        ckpt_every_n_steps=2,
        model={"response_prior": "linear", "prior": SETTINGS_PARAMS, **model},
    )
    loader = loader_params()
    train_st(split, columns=COLUMNS, loader=loader, training=training, run_dir=tmp_path / "r")
    return split, load_run(tmp_path / "r")


def test_a_model_that_learns_nothing_predicts_its_prior(tmp_path):
    split, run = _trained(tmp_path, 2, direct_path=False)
    with torch.no_grad():  # the network's departure is zero: only the prior moves the cells
        run.net.output_head[-1].weight.zero_()
        run.net.output_head[-1].bias.zero_()
    key = ("ds.A", "p6")
    data = split.data
    cells = predict_cells(run, data, {key: 64}, seed=0, control_mean=True).cells[key]
    control = data.X[data.control_rows("ds.A")].mean(axis=0)
    prior, _ = fit_response_prior(
        data, training_effects(data), kind="linear", control_label="ctrl", settings=SETTINGS
    ).deltas([key], data)
    np.testing.assert_allclose(cells.mean(axis=0) - control, prior[0], atol=1e-4)


def test_out_of_context_scope_predicts_unknown_keys_at_their_prior(tmp_path):
    split, run = _trained(tmp_path, 4, prior_scope="out_of_context")
    data = split.data
    # p6 is trained in B only: nothing in A; p0 is trained in A: the network's own
    held, known = ("ds.A", "p6"), ("ds.A", "p0")
    result = predict_cells(run, data, {held: 64, known: 64}, seed=0)
    prior = fit_response_prior(
        data, training_effects(data), kind="linear", control_label="ctrl", settings=SETTINGS
    )
    deltas, _ = prior.deltas([held, known], data)
    # the prior, from the context's control population (the drawn cells centred on it)
    control = data.control_mean("ds.A")
    np.testing.assert_allclose(result.cells[held].mean(axis=0) - control, deltas[0], atol=1e-4)
    drawn = data.X[result.starts[held]]
    np.testing.assert_allclose(  # each cell keeps its own departure from the drawn mean
        result.cells[held] - result.cells[held].mean(axis=0),
        drawn - drawn.mean(axis=0),
        atol=1e-4,
    )
    assert not np.allclose(result.cells[known].mean(axis=0) - control, deltas[1], atol=1e-2)
    sources = dict(zip(result.encoded.keys, result.encoded.sources, strict=True))
    assert sources[held] == "prior linear:linear:other_contexts"
    assert not sources[known].startswith("prior")
    # a sweep compares networks: network_only puts no key at its prior
    network = predict_cells(run, data, {held: 64}, seed=0, network_only=True)
    assert not network.encoded.sources[0].startswith("prior")
    assert not np.allclose(network.cells[held].mean(axis=0) - control, deltas[0], atol=1e-2)
    # the network trained without the prior: no table in the module, one in the run folder
    assert (tmp_path / "r" / "response_prior.json").is_file()


def test_out_of_context_means_no_component_trained_in_that_context():
    effects = training_effects(_data())
    effects = dataclasses.replace(effects, keys=[("c", "drugA@1uM"), ("c", "X"), *effects.keys[2:]])
    keys = [
        ("c", "drugA@10uM"),  # another dose of a drug trained here: the network's
        ("c", "X+Y"),  # one component trained here: the network's
        ("c", "Y"),
        ("d", "X"),  # trained, but in another context
        ("c", "ctrl"),
    ]
    assert out_of_context_keys(effects, keys, "ctrl") == [False, False, True, True, False]
