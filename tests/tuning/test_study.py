"""Storage, study identity, trial counting, and the study's tables and figures."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from perturbflow.exceptions import InputError
from perturbflow.tuning.figures import study_figures
from perturbflow.tuning.space import suggest
from perturbflow.tuning.study import count_finished, open_study, run_study
from perturbflow.tuning.tables import best_params, trials_table
from tests.tuning.support import study_storage, tune_params
from tests.tuning.sweep_worker import value_of


def _objective(tune, *, prune_below: float | None = None):
    def objective(trial):
        values = suggest(trial, tune.space)
        value = value_of(values)
        trial.report(value, step=10)
        if prune_below is not None and value < prune_below:
            raise optuna.TrialPruned()
        return value

    return objective


def test_default_storage_is_a_sqlite_file_per_study_in_a_created_folder(tmp_path):
    tune = tune_params(study_name="my-study")
    storage = study_storage(tmp_path / "deep" / "er")
    url = storage.study_url(tune.study_name)
    assert url == f"sqlite:///{tmp_path}/deep/er/optuna/my-study.db"
    assert (tmp_path / "deep" / "er" / "optuna").is_dir()
    open_study(tune, storage)
    assert (tmp_path / "deep" / "er" / "optuna" / "my-study.db").is_file()
    assert storage.trial_dir("my-study", 7) == tmp_path / "deep/er/optuna/my-study/trial-0007"


def test_explicit_urls_are_checked(tmp_path):
    db = tmp_path / "sub" / "shared.db"
    assert study_storage(tmp_path, f"sqlite:///{db}").study_url("any") == f"sqlite:///{db}"
    assert db.parent.is_dir()
    with pytest.raises(InputError, match="not a database URL"):
        study_storage(tmp_path, "data/06_models/optuna/x.db").study_url("any")


def test_a_resumed_study_must_be_the_same_tuning_problem(tmp_path):
    tune = tune_params()
    identity = {"objective": "pearson_delta", "split": "zs", "init_from": "runs/a"}
    open_study(tune, study_storage(tmp_path), identity=identity)
    open_study(tune, study_storage(tmp_path), identity=identity)  # same problem: loads
    with pytest.raises(InputError, match=r"split: stored 'zs', now 'fewshot'"):
        open_study(tune, study_storage(tmp_path), identity={**identity, "split": "fewshot"})
    with pytest.raises(InputError, match="created to maximize"):
        open_study(tune_params(direction="minimize"), study_storage(tmp_path), identity=identity)


def test_n_trials_counts_complete_and_pruned_trials_of_the_whole_study(tmp_path):
    tune = tune_params(n_trials=6)
    study = open_study(tune, study_storage(tmp_path))
    assert run_study(study, _objective(tune, prune_below=0.0), n_trials=3, timeout=None) == 3
    # a later run with a larger target only runs the difference
    assert run_study(study, _objective(tune, prune_below=0.0), n_trials=6, timeout=None) == 3
    states = [t.state for t in study.get_trials()]
    assert count_finished(study) == 6
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    with pytest.raises(InputError, match="n_trials must be >= 1"):
        run_study(study, _objective(tune), n_trials=0, timeout=None)


def test_a_failing_objective_stops_the_sweep_and_keeps_what_finished(tmp_path):
    tune = tune_params(n_trials=5)
    study = open_study(tune, study_storage(tmp_path))

    def objective(trial):
        if trial.number == 2:
            raise RuntimeError("broken trial")
        return value_of(suggest(trial, tune.space))

    with pytest.raises(RuntimeError, match="broken trial"):
        run_study(study, objective, n_trials=5, timeout=None)
    reloaded = open_study(tune, study_storage(tmp_path))
    assert [t.state for t in reloaded.get_trials()] == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.FAIL,
    ]


def test_a_trial_has_a_heartbeat_before_its_objective_draws_parameters(tmp_path, monkeypatch):
    # Optuna's own first beat comes from a thread racing the objective; a trial killed
    # before it would never be seen as stale, so its parameters would never be retried.
    # The thread is replaced by Optuna's no-op one: the moment before it first ran.
    from optuna.storages._heartbeat import NullHeartbeatThread

    monkeypatch.setattr(
        optuna.study._optimize, "get_heartbeat_thread", lambda *_: NullHeartbeatThread()
    )
    tune = tune_params(n_trials=3)
    db = Path(study_storage(tmp_path).study_url(tune.study_name).removeprefix("sqlite:///"))
    study = open_study(tune, study_storage(tmp_path))
    beats_at_start = []

    def objective(trial):
        with sqlite3.connect(db, timeout=30) as con:
            rows = con.execute(
                "SELECT COUNT(*) FROM trial_heartbeats WHERE trial_id = ?", (trial._trial_id,)
            ).fetchall()
        beats_at_start.append(rows[0][0])
        return value_of(suggest(trial, tune.space))

    assert run_study(study, objective, n_trials=3, timeout=None) == 3
    assert beats_at_start == [1, 1, 1]


def test_tables_and_figures_of_a_study(tmp_path):
    tune = tune_params(n_trials=8)
    study = open_study(tune, study_storage(tmp_path))
    run_study(study, _objective(tune, prune_below=-6.0), n_trials=8, timeout=None)
    table = trials_table(study)
    assert list(table["number"]) == list(range(len(study.trials)))
    assert {"params_x", "params_k", "state", "value", "duration", "last_step"} <= set(table)
    assert set(table["last_step"]) == {10}

    record = best_params(
        study, extra={"storage": study_storage(tmp_path).study_url(tune.study_name)}
    )
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert record["best_trial"] == best.number and record["value"] == best.value
    assert record["params"] == best.params
    assert record["n_finished"] == 8
    json.dumps(record)  # JSON-ready

    figures = study_figures(study)
    n_complete = sum(t.state == TrialState.COMPLETE for t in study.trials)
    history = figures["history"]
    assert len(history.data[0].x) == n_complete  # one point per complete trial
    importances = figures["importances"]
    assert set(importances.data[0].y) == {"x", "k"}
    assert math.isclose(sum(importances.data[0].x), 1.0, rel_tol=1e-6)
    parallel = figures["parallel"]
    axes = list(parallel.layout.xaxis.ticktext)
    assert axes[0] == "Objective Value" and set(axes[1:]) == {"x", "k"}
    assert sum(trace.mode == "lines" for trace in parallel.data) == n_complete


def test_figures_and_record_of_an_empty_study(tmp_path: Path):
    study = open_study(tune_params(), study_storage(tmp_path))
    record = best_params(study)
    assert record["best_trial"] is None and record["n_finished"] == 0
    assert trials_table(study).empty
    for figure in study_figures(study).values():
        assert figure.layout.annotations  # a note instead of a failure
