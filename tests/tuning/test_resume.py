"""A sweep killed mid-way resumes: finished trials are kept, the dead one is retried."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from perturbflow.tuning.objective import FinetuningObjective, run_number
from perturbflow.tuning.params import CategoricalDimension, FloatDimension
from perturbflow.tuning.space import suggest
from perturbflow.tuning.study import count_finished, open_study, run_study
from tests.finetuning.support import finetuning_params
from tests.synthetic import COLUMNS
from tests.tuning.support import study_storage, tune_params, worker_args
from tests.tuning.sweep_worker import value_of

WORKER = Path(__file__).with_name("sweep_worker.py")


def _query(db: Path, sql: str) -> list[tuple]:
    if not db.is_file():
        return []
    with sqlite3.connect(db, timeout=30) as con:
        try:
            return con.execute(sql).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []


def _states(db: Path) -> dict[int, str]:
    return dict(_query(db, "SELECT number, state FROM trials"))


def _running_with_params(db: Path, n_params: int = 1) -> int:
    """RUNNING trials with ``n_params`` parameters stored (the objective is past suggest).

    Optuna stores a trial's parameters one by one: a worker killed between two of them
    leaves a trial with part of its parameters, whose retry then draws the rest anew.
    """
    sql = (
        "SELECT COUNT(*) FROM (SELECT t.trial_id FROM trials t JOIN trial_params p "
        "ON p.trial_id = t.trial_id WHERE t.state = 'RUNNING' "
        f"GROUP BY t.trial_id HAVING COUNT(p.param_id) >= {int(n_params)})"
    )
    rows = _query(db, sql)
    return int(rows[0][0]) if rows else 0


def _kill_when(
    proc: subprocess.Popen, db: Path, *, complete: int, running: int, n_params: int = 1
) -> None:
    """SIGKILL ``proc`` once the DB holds ``complete`` COMPLETE and ``running`` RUNNING trials
    (each with ``n_params`` parameters drawn)."""
    deadline = time.monotonic() + 300  # a hang guard, not a timing assertion
    while time.monotonic() < deadline:
        states = list(_states(db).values())
        ready = _running_with_params(db, n_params) >= running
        if states.count("COMPLETE") >= complete and ready:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            raise AssertionError(f"worker ended early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the worker never reached the state to kill it in")


def test_killed_sweep_resumes_keeps_finished_trials_and_retries_the_dead_one(tmp_path):
    # the space of a real finetuning config: a retried trial must get the dead one's config
    space = {
        "lora.rank": CategoricalDimension("categorical", [4, 8, 16]),
        "lora.alpha": FloatDimension("float", 4.0, 64.0, True),
    }
    tune = tune_params(n_trials=5, space=space)
    storage = study_storage(tmp_path)
    configs = FinetuningObjective(
        None,
        columns=COLUMNS,
        loader=None,
        finetuning=finetuning_params(),
        base=None,
        storage=storage,
        tune=tune,
    )
    params_file = tmp_path / "tune.json"
    params_file.write_text(json.dumps(worker_args(tune, storage)))
    db = Path(storage.study_url(tune.study_name).removeprefix("sqlite:///"))
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(params_file), "2"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _kill_when(proc, db, complete=2, running=1, n_params=len(space))
    assert proc.returncode == -signal.SIGKILL
    assert _states(db) == {0: "COMPLETE", 1: "COMPLETE", 2: "RUNNING"}

    killed = optuna.load_study(
        study_name=tune.study_name, storage=storage.study_url(tune.study_name)
    )
    before = {t.number: t for t in killed.get_trials()}
    # the dead trial's last heartbeat is at most the kill; after the grace period it is stale
    time.sleep(tune.heartbeat.grace_period + tune.heartbeat.interval + 0.5)

    ran, run_numbers, used = [], {}, {}

    def objective(trial):
        ran.append(trial.number)
        values = suggest(trial, tune.space)
        run_numbers[trial.number] = run_number(trial)
        used[trial.number] = configs.config(values)
        return value_of(values)

    study = open_study(tune, storage)
    assert run_study(study, objective, n_trials=tune.n_trials, timeout=None) == 3

    trials = {t.number: t for t in study.get_trials()}
    assert 0 not in ran and 1 not in ran  # finished trials are not run again
    for number in (0, 1):
        assert trials[number].state == TrialState.COMPLETE
        assert trials[number].params == before[number].params
        assert trials[number].value == before[number].value
        assert trials[number].datetime_complete == before[number].datetime_complete
    assert trials[2].state == TrialState.FAIL  # left RUNNING by the kill
    retries = [t for t in trials.values() if t.system_attrs.get("failed_trial") == 2]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == before[2].params  # the dead trial's parameters, re-run
    # ... in the dead trial's run directory, with the same finetuning config, so that
    # finetune_st resumes there from checkpoints/last.ckpt
    assert run_numbers[retries[0].number] == 2
    assert used[retries[0].number] == configs.config(before[2].params)
    assert used[retries[0].number].lora.rank == before[2].params["lora.rank"]
    assert all(run_numbers[n] == n for n in ran if n != retries[0].number)
    assert count_finished(study) == tune.n_trials
    # the resumed sampler continues: it does not replay the killed run's first draws
    fresh = [t for t in trials.values() if t.number > 2 and t is not retries[0]]
    assert all(t.params != trials[n].params for t in fresh for n in (0, 1))

    # a rerun of a complete study runs nothing
    again = open_study(tune, storage)
    assert run_study(again, objective, n_trials=tune.n_trials, timeout=None) == 0
    assert len(again.get_trials()) == len(trials)
