"""Two sweep workers share one study in a real PostgreSQL server; one is killed mid-trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.tuning.postgres import PostgresUnavailable, start_server
from tests.tuning.support import study_storage, tune_params, worker_args

REPO = Path(__file__).resolve().parents[2]
WORKER = "tests.tuning.shared_sweep_worker"


@pytest.fixture(scope="module")
def postgres_url():
    try:
        server = start_server()
    except PostgresUnavailable as err:
        if os.environ.get("CI"):  # CI installs PostgreSQL (.ci/run): it must start there
            pytest.fail(f"PostgreSQL did not start in CI: {err}")
        pytest.skip(f"PostgreSQL cannot start here: {err}")
    yield server.url
    server.stop()


def _worker(params: Path, log: Path, hang_at: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", WORKER, str(params), str(log), "0.7", str(hang_at)]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def test_two_workers_finish_the_study_none_lost_none_twice(postgres_url, tmp_path):
    tune = tune_params(n_trials=8, study_name="shared")
    storage = study_storage(tmp_path, postgres_url)
    params = tmp_path / "tune.json"
    params.write_text(json.dumps(worker_args(tune, storage)))
    log = tmp_path / "completed.txt"
    log.touch()
    doomed = _worker(params, log, hang_at=2)  # completes one trial, hangs in its second
    survivor = _worker(params, log, hang_at=0)
    hanging = Path(f"{log}.hanging")
    deadline = time.monotonic() + 180  # a hang guard, not a timing assertion
    killed = None
    while killed is None and time.monotonic() < deadline:
        if hanging.is_file() and hanging.read_text().endswith("\n"):
            pid, number = map(int, hanging.read_text().split())
            assert pid == doomed.pid
            killed = number
        if doomed.poll() is not None:
            raise AssertionError(doomed.stderr.read().decode()[-2000:])
        time.sleep(0.1)
    assert killed is not None, "the doomed worker never hung in a trial"
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    killed_params = (
        optuna.load_study(study_name="shared", storage=postgres_url).trials[killed].params
    )
    assert survivor.wait(timeout=300) == 0, survivor.stderr.read().decode()[-2000:]

    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials()
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == tune.n_trials  # the study reached n_trials, no more
    assert trials[killed].state == TrialState.FAIL  # the dead trial, failed by its heartbeat
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed_params  # retried with the dead trial's parameters
    # both workers did real work, and no trial was run to completion twice
    lines = [line.split(maxsplit=2) for line in log.read_text().splitlines()]
    assert {int(pid) for pid, _, _ in lines} == {doomed.pid, survivor.pid}
    numbers = [int(n) for _, n, _ in lines]
    assert sorted(numbers) == sorted(t.number for t in finished)
    assert len(set(numbers)) == len(numbers)
    assert all(t.state != TrialState.RUNNING for t in trials)


def test_a_schema_created_by_another_worker_at_the_same_time_is_retried(tmp_path, monkeypatch):
    from sqlalchemy.exc import IntegrityError

    import perturbflow.tuning.study as study_module
    from perturbflow.tuning.study import make_storage

    real = study_module.RDBStorage
    calls = []

    def racing(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:  # the other worker's CREATE TABLE won the race
            raise IntegrityError("CREATE TABLE alembic_version", {}, Exception("UniqueViolation"))
        return real(url, **kwargs)

    monkeypatch.setattr(study_module, "RDBStorage", racing)
    monkeypatch.setattr(study_module.time, "sleep", lambda s: None)
    tune = tune_params()
    storage = make_storage(f"sqlite:///{tmp_path / 'race.db'}", tune.heartbeat)
    assert len(calls) == 2 and storage.get_all_studies() == []
