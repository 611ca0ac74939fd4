"""The ``tune`` pipeline: its node on an in-memory catalog, and its conf files."""

from __future__ import annotations

import json

import anndata as ad
import plotly.graph_objects as go
import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from perturbflow.datasets import RunsDataset
from perturbflow.exceptions import InputError
from perturbflow.models.training.finetune import FinetuningParams
from perturbflow.pipelines.tune import create_pipeline
from perturbflow.pipelines.tune.nodes import tune_finetuning_hyperparameters
from perturbflow.settings import CONFIG_LOADER_ARGS
from perturbflow.tuning.params import CategoricalDimension, FloatDimension, TuneParams
from tests.finetuning.support import finetuning_params
from tests.models.support import loader_params
from tests.support import PROJECT_ROOT
from tests.synthetic import COLUMNS
from tests.tuning.support import study_storage, tune_params

OUTPUTS = (
    "tune_best_params",
    "tune_trials",
    "tune_history_plot",
    "tune_importances_plot",
    "tune_parallel_plot",
)


class KeptDataset(MemoryDataset):
    """A MemoryDataset the runner cannot release."""

    def _release(self) -> None:
        pass


def _inputs(screen, base_run, tmp_path, **tune_overrides) -> dict:
    space = {
        "lora.rank": CategoricalDimension("categorical", [2, 4]),
        "optimizer.lr": FloatDimension("float", 1e-3, 1e-2, True),
    }
    return {
        "st_models": RunsDataset(path=str(base_run.parent)).load(),  # holds base/
        "tune_storage": study_storage(tmp_path),
        "preprocessed_adata@cells": ad.read_h5ad(screen["path"], backed="r"),
        "split_table": screen["table"],
        "hvg_genes": list(screen["adata"].var_names),
        "params:columns": COLUMNS,
        "params:loader": loader_params(),
        "params:finetuning": finetuning_params(
            max_steps=10, val_every_n_steps=5, ckpt_every_n_steps=5, cpu_threads=1
        ),
        "params:tune": tune_params(
            **{"split": None, "n_trials": 2, "space": space, **tune_overrides}
        ),
    }


def _run_sweep(screen, base_run, tmp_path) -> DataCatalog:
    """The tune pipeline on an in-memory catalog; its outputs kept for the test."""
    catalog = DataCatalog(
        {
            name: MemoryDataset(value, copy_mode="assign")
            for name, value in _inputs(screen, base_run, tmp_path).items()
        }
    )
    for name in OUTPUTS:
        catalog[name] = KeptDataset(copy_mode="assign")
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog


def test_tune_pipeline_writes_best_params_trials_and_figures(screen, base_run, tmp_path):
    catalog = _run_sweep(screen, base_run, tmp_path)
    best = catalog["tune_best_params"].load()
    trials = catalog["tune_trials"].load()
    assert best["n_finished"] == 2 and len(trials) == 2
    assert best["storage"] == f"sqlite:///{tmp_path}/optuna/study.db"
    assert best["finetuning"]["lora"]["rank"] == best["params"]["lora.rank"]
    json.dumps(best)
    assert set(trials["state"]) <= {"COMPLETE", "PRUNED"}
    for name in OUTPUTS[2:]:
        assert isinstance(catalog[name].load(), go.Figure)
    # rerun: the study is complete, nothing is trained again, the reports are rebuilt
    again = _run_sweep(screen, base_run, tmp_path)["tune_trials"].load()
    assert list(again["number"]) == list(trials["number"])
    assert list(again["value"]) == list(trials["value"])


def test_tune_node_rejects_an_unknown_split(screen, base_run, tmp_path):
    inputs = _inputs(screen, base_run, tmp_path, split="nope")
    with pytest.raises(InputError, match="'nope', not a split of the split table"):
        tune_finetuning_hyperparameters(*inputs.values())


@pytest.mark.parametrize("env", ["base", "test"])
def test_conf_tune_params_and_catalog_are_valid(env):
    loader = OmegaConfigLoader(
        conf_source=str(PROJECT_ROOT / "conf"),
        **{**CONFIG_LOADER_ARGS, "default_run_env": env},
    )
    params = loader["parameters"]
    tune = TuneParams(**params["tune"])
    FinetuningParams(**params["finetuning"])
    assert tune.base is None  # finetuning.base
    catalog = loader["catalog"]
    assert catalog["tune_storage"]["path"] == "data/06_models/optuna"
    assert tune.space["lora.rank"].choices == ([4, 8, 16] if env == "base" else [4, 8])
    assert set(tune.space) == {
        "lora.rank",
        "lora.alpha",
        "loss.base_weight",
        "loss.delta_mse_weight",
        "loss.delta_pearson_weight",
        "optimizer.lr",
    }
    catalog = loader["catalog"]
    assert catalog["tune_best_params"]["type"] == "json.JSONDataset"
    assert catalog["tune_trials"]["type"] == "pandas.CSVDataset"
    for name in OUTPUTS[2:]:
        assert catalog[name]["type"] == "plotly.JSONDataset"
    assert set(create_pipeline().outputs()) == set(OUTPUTS)
