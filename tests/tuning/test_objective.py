"""Trials are real finetunings (helper A's ``finetune_st``) with the trial's values.

Uses the finetuning tests' screen: a base run trained on contexts A and B, finetuned on
context D (reversed responses), validated on D's p2.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from perturbflow.exceptions import InputError
from perturbflow.models.runs.run_dir import load_run, read_json
from perturbflow.tuning.objective import FinetuningObjective, combine
from perturbflow.tuning.params import CategoricalDimension, FloatDimension, PrunerParams
from perturbflow.tuning.study import open_study, run_study
from perturbflow.tuning.sweep import base_config, tune_finetuning
from tests.finetuning.support import finetuning_params
from tests.models.support import loader_params
from tests.synthetic import COLUMNS
from tests.tuning.support import study_storage, tune_params

SPACE = {
    "lora.rank": CategoricalDimension("categorical", [2, 4]),
    "lora.alpha": FloatDimension("float", 2.0, 16.0, True),
    "loss.delta_mse_weight": FloatDimension("float", 0.0, 1.0, False),
    "optimizer.lr": FloatDimension("float", 1e-3, 1e-2, True),
}


def _finetuning(**overrides):
    values = dict(max_steps=20, val_every_n_steps=10, ckpt_every_n_steps=10, cpu_threads=1)
    values.update(overrides)
    return finetuning_params(**values)


def _sweep(ft_split, base_run, tmp_path, tune):
    """``tune_finetuning`` of the test split from ``base_run``, the study under tmp_path."""
    return tune_finetuning(
        ft_split,
        load_run(base_run),
        study_storage(tmp_path),
        columns=COLUMNS,
        loader=loader_params(),
        finetuning=_finetuning(),
        tune=tune,
    )


def _pruner(kind: str) -> PrunerParams:
    return PrunerParams(
        kind=kind,
        n_startup_trials=0,
        n_warmup_steps=0,
        interval_steps=1,
        percentile=50.0,
        reduction_factor=3,
    )


def test_each_trial_finetunes_with_its_values_and_scores_val_pearson_delta(
    tmp_path,
    base_run,
    ft_split,
):
    tune = tune_params(split=None, n_trials=2, space=SPACE, pruner=_pruner("median"))
    result = _sweep(ft_split, base_run, tmp_path, tune)
    assert result.ran == 2
    complete = [t for t in result.study.trials if t.state == TrialState.COMPLETE]
    assert complete and all(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in result.study.trials
    )
    for trial in complete:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir == tmp_path / "optuna" / "study" / f"trial-{trial.number:04d}"
        summary = read_json(run_dir / "run.json")
        assert summary["status"] == "finished" and summary["steps"] == 20
        assert trial.value == summary["best_val_pearson_delta"]
        adapter = read_json(run_dir / "adapter_config.json")
        assert adapter["lora"]["rank"] == trial.params["lora.rank"]
        assert adapter["lora"]["alpha"] == pytest.approx(trial.params["lora.alpha"])
        config = yaml.safe_load((run_dir / "finetune.yaml").read_text())["finetuning"]
        assert config["optimizer"]["lr"] == pytest.approx(trial.params["optimizer.lr"])
        assert config["loss"]["delta_mse_weight"] == pytest.approx(
            trial.params["loss.delta_mse_weight"]
        )
        assert not (run_dir / "checkpoints").exists()  # keep_checkpoints: false
        assert (run_dir / "adapter.pt").is_file()
        # the pruning callback reported val pearson_delta at the optimiser steps
        assert set(trial.intermediate_values) == {10, 20}
        assert max(trial.intermediate_values.values()) == pytest.approx(trial.value)
    best = result.best
    assert best["best_trial"] == max(complete, key=lambda t: t.value).number
    assert best["finetuning"]["lora"]["rank"] == best["params"]["lora.rank"]
    assert best["finetuning"]["base"] == "base"
    assert Path(best["user_attrs"]["run_dir"]).name == f"trial-{best['best_trial']:04d}"
    assert len(result.trials) == 2 and "params_lora.rank" in result.trials


def test_a_pruned_trial_stops_its_finetuning_at_the_pruning_step(
    tmp_path,
    base_run,
    ft_split,
):
    tune = tune_params(
        split=None,
        n_trials=1,
        space=SPACE,
        pruner=_pruner("median"),
        keep_checkpoints=True,
    )
    finetuning = base_config(_finetuning(max_steps=40), tune)
    study = open_study(tune, study_storage(tmp_path))
    study.pruner = optuna.pruners.ThresholdPruner(lower=2.0)  # pearson <= 1: prune at once
    objective = FinetuningObjective(
        ft_split,
        columns=COLUMNS,
        loader=loader_params(),
        finetuning=finetuning,
        base=load_run(base_run),
        storage=study_storage(tmp_path),
        tune=tune,
    )
    run_study(study, objective, n_trials=1, timeout=None)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    assert list(trial.intermediate_values) == [10]  # the first validation
    run_dir = Path(trial.user_attrs["run_dir"])
    logged = pd.read_csv(run_dir / "logs" / "metrics.csv")
    assert logged["step"].max() < 20  # training stopped there, not at max_steps = 40
    assert read_json(run_dir / "run.json")["status"] == "running"


def test_cell_eval_objective_combines_validation_metrics(tmp_path, base_run, ft_split):
    tune = tune_params(
        split=None,
        n_trials=1,
        space=SPACE,
        objective="cell_eval",
    )
    result = _sweep(ft_split, base_run, tmp_path, tune)
    (trial,) = result.study.trials
    assert trial.state == TrialState.COMPLETE
    means = {m: trial.user_attrs[f"val_{m}"] for m in tune.cell_eval.weights}
    assert -1.0 <= means["pearson_delta"] <= 1.0
    assert 0.0 <= means["discrimination_score_l1"] <= 1.0
    assert trial.value == pytest.approx(combine(means, tune.cell_eval.weights))
    assert math.isfinite(trial.value)


def test_bad_sweeps_fail_before_the_first_trial(tmp_path, base_run, ft_split):
    finetuning = _finetuning()
    run = dict(columns=COLUMNS, loader=loader_params(), finetuning=finetuning)
    start = (ft_split, load_run(base_run), study_storage(tmp_path))
    bad_space = {"lora.rank": FloatDimension("float", 2.0, 8.0, False)}
    with pytest.raises(InputError, match="lora.rank: a float range on an integer field"):
        tune_finetuning(
            ft_split,
            load_run(base_run),
            study_storage(tmp_path),
            tune=tune_params(split=None, space=bad_space),
            **run,
        )
    with pytest.raises(InputError, match="not cell-eval metrics"):
        bad = tune_params(split=None, space=SPACE, objective="cell_eval")
        bad = type(bad)(
            **{
                **bad.__dict__,
                "cell_eval": type(bad.cell_eval)(
                    weights={"pearson": 1.0}, profile="anndata", num_threads=1
                ),
            }
        )
        tune_finetuning(*start, tune=bad, **run)
    with pytest.raises(InputError, match="tunes 'base'"):
        tune_finetuning(
            ft_split,
            load_run(base_run),
            study_storage(tmp_path),
            tune=tune_params(split="base", space=SPACE),
            **run,
        )
    assert not (tmp_path / "optuna" / "study.db").exists()  # nothing was started
