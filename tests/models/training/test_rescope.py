"""A run is reused, not retrained, when only an inference-only ``prior_scope`` changed."""

from __future__ import annotations

import hashlib

import pandas as pd
import torch
import yaml

from perturbflow.models.runs.run_dir import load_run, read_json, write_json
from perturbflow.models.training.train import train_st
from tests.models.support import loader_params, make_split, training_params
from tests.synthetic import COLUMNS


def _train(split, run_dir, scope: str) -> dict:
    training = training_params(
        max_steps=6, val_every_n_steps=3, model={"response_prior": "linear", "prior_scope": scope}
    )
    return train_st(
        split, columns=COLUMNS, loader=loader_params(), training=training, run_dir=run_dir
    )


def _weights(run_dir) -> str:
    return hashlib.sha256((run_dir / "model.pt").read_bytes()).hexdigest()


def test_changing_an_inference_only_scope_reuses_the_network(planted, tmp_path):
    split = make_split(planted["adata"], planted["path"], planted["table"], "zs")
    run_dir = tmp_path / "run"
    first = _train(split, run_dir, "out_of_context")
    weights = _weights(run_dir)
    fresh = _train(split, tmp_path / "fresh", "informed")  # what a new training writes

    second = _train(split, run_dir, "informed")
    assert _weights(run_dir) == weights  # not retrained
    assert second["fit_wall_seconds"] == first["fit_wall_seconds"]
    assert second["config_sha256"] == fresh["config_sha256"] != first["config_sha256"]
    assert read_json(run_dir / "run.json")["config_sha256"] == fresh["config_sha256"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["training"]["model"]["prior_scope"] == "informed"
    assert load_run(run_dir).config["training"]["model"]["prior_scope"] == "informed"
    pd.testing.assert_frame_equal(
        pd.read_csv(run_dir / "perturbation_sources.csv"),
        pd.read_csv(tmp_path / "fresh" / "perturbation_sources.csv"),
    )
    # the same network, bit for bit (the files' bytes differ: torch names the archive)
    fresh_state = torch.load(tmp_path / "fresh" / "model.pt", weights_only=True)
    state = torch.load(run_dir / "model.pt", weights_only=True)
    assert fresh_state.keys() == state.keys()
    assert all(torch.equal(fresh_state[k], state[k]) for k in state)

    # killed before run.json was rewritten: the next call finishes the change
    write_json(run_dir / "run.json", first)
    assert _train(split, run_dir, "informed")["config_sha256"] == fresh["config_sha256"]
    assert read_json(run_dir / "run.json")["config_sha256"] == fresh["config_sha256"]

    # scope all trains another network (the prior added in training): not reused
    _train(split, run_dir, "all")
    assert read_json(run_dir / "run.json")["config_sha256"] != fresh["config_sha256"]
    assert list(tmp_path.glob("run.previous-*"))  # the informed run moved aside, kept
