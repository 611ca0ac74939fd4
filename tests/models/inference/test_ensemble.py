"""Seed ensembles: member names, and predictions that are the members' cell-wise mean."""

from __future__ import annotations

import copy
import dataclasses

import anndata as ad
import numpy as np
import pytest

from perturbflow.commands import run_cli
from perturbflow.exceptions import InputError
from perturbflow.models.inference.predict import predict_cells, predict_ensemble
from perturbflow.models.inference.validation import predict_mean_deltas
from perturbflow.models.runs.adapter import ADAPTER_CONFIG
from perturbflow.models.runs.members import (
    check_ensemble,
    member_names,
    member_seeds,
    member_trainings,
)
from perturbflow.models.runs.run_dir import load_run
from perturbflow.models.training.train import train_st
from tests.models.inference.inference_data import infer_args
from tests.models.support import loader_params, training_params
from tests.synthetic import COLUMNS


def test_member_names_keep_the_split_name_for_the_first_network():
    assert member_names("fewshot", 0, 1) == ["fewshot"]
    assert member_names("fewshot", 4, 3) == ["fewshot", "fewshot.seed5", "fewshot.seed6"]
    assert member_seeds(4, 3) == [4, 5, 6]
    training = training_params(seed=4, ensemble=3, max_steps=7)
    members = member_trainings("fewshot", training)
    assert [name for name, _ in members] == member_names("fewshot", 4, 3)
    assert [t.seed for _, t in members] == [4, 5, 6]
    for _, member in members:  # only the seed differs
        assert dataclasses.replace(member, seed=4) == training
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="training.ensemble"):
            check_ensemble(bad)


@pytest.fixture(scope="module")
def two_members(trained_run):
    """The shared run (seed 0) and one more trained with seed 1 on the same split."""
    run_dir = trained_run["root"] / "run_seed1"
    train_st(
        trained_run["split"],
        columns=COLUMNS,
        loader=loader_params(),
        training=training_params(seed=1),
        run_dir=run_dir,
    )
    return load_run(trained_run["run_dir"]), load_run(run_dir), trained_run["split"].data


def test_ensemble_cells_are_the_members_mean_from_the_same_controls(two_members):
    first, second, data = two_members
    keys = data.heldout_keys("test")
    one = predict_cells(first, data, keys, seed=3, allow_unknown=True)
    two = predict_cells(second, data, keys, seed=3, allow_unknown=True)
    both = predict_ensemble([first, second], data, keys, seed=3, allow_unknown=True)
    for key in keys:
        np.testing.assert_array_equal(one.starts[key], two.starts[key])  # same controls
        assert np.abs(one.cells[key] - two.cells[key]).max() > 1e-3  # two networks
        np.testing.assert_allclose(
            both.cells[key], (one.cells[key] + two.cells[key]) / 2, rtol=1e-6, atol=1e-6
        )
    alone = predict_ensemble([first], data, keys, seed=3, allow_unknown=True)
    for key in keys:
        np.testing.assert_array_equal(alone.cells[key], one.cells[key])
    # validation deltas: the mean of the members' (a mean of means)
    deltas = [predict_mean_deltas(run, data, seed=3) for run in (first, second)]
    averaged = predict_mean_deltas([first, second], data, seed=3)
    assert averaged
    for key, delta in averaged.items():
        np.testing.assert_allclose(delta, (deltas[0][key] + deltas[1][key]) / 2, atol=1e-5)


def test_ensemble_refuses_runs_that_cannot_be_averaged(two_members):
    first, second, data = two_members
    keys = data.heldout_keys("test")
    with pytest.raises(InputError, match="at least one"):
        predict_ensemble([], data, keys, seed=0)
    other_genes = dataclasses.replace(second, genes=list(reversed(second.genes)))
    with pytest.raises(InputError, match="share genes"):
        predict_ensemble([first, other_genes], data, keys, seed=0)
    config = copy.deepcopy(second.config)
    config["loader"]["cell_set_len"] += 1
    with pytest.raises(InputError, match="sentence length"):
        predict_ensemble([first, dataclasses.replace(second, config=config)], data, keys, seed=0)


def test_cli_infer_averages_the_runs_of_an_ensemble(two_members, trained_run, tmp_path, capsys):
    adata = trained_run["adata"]
    keep = (adata.obs["celltype"] == "C") & adata.obs["pert"].isin(["ctrl", "p3"])
    src = tmp_path / "in.h5ad"
    adata[keep.to_numpy()].copy().write_h5ad(src)
    dirs = [trained_run["run_dir"], trained_run["root"] / "run_seed1"]
    outputs = {}
    for name, runs in {"first": dirs[:1], "second": dirs[1:], "both": dirs}.items():
        args = infer_args(runs[0], src, "--output", str(tmp_path / f"{name}.h5ad"))
        at = args.index("--run")
        args[at + 1 : at + 2] = [str(r) for r in runs]
        assert run_cli(args) == 0, capsys.readouterr().err
        outputs[name] = ad.read_h5ad(tmp_path / f"{name}.h5ad")
    first, second, both = (outputs[k] for k in ("first", "second", "both"))
    assert list(both.obs_names) == list(first.obs_names)
    perturbed = (both.obs["pert"] != "ctrl").to_numpy()
    assert np.abs(first.X[perturbed] - second.X[perturbed]).max() > 1e-3
    np.testing.assert_allclose(both.X, (first.X + second.X) / 2, atol=1e-5)
    # an adapter run is not averaged with others
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / ADAPTER_CONFIG).write_text("{}")
    args = infer_args(adapter, src, "--output", str(tmp_path / "x.h5ad"))
    args.insert(args.index("--run") + 2, str(dirs[0]))
    assert run_cli(args) == 2
    assert "give it alone" in capsys.readouterr().err
