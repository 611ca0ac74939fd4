"""`kedro run` as a user types it: a bad input is one short block, and the tree stays clean."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _kedro_run(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "KEDRO_DISABLE_TELEMETRY"}
    environ.update(env)  # telemetry as a new user has it: not disabled by the environment
    return subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--pipelines", "preprocessing", *args],
        cwd=root,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_bad_input_prints_one_short_block_and_changes_nothing(project_copy: Path):
    pyproject = (project_copy / "pyproject.toml").read_bytes()
    done = _kedro_run(project_copy, "--params", "columns.pert_col=perturbaton")
    assert done.returncode == 1
    block = done.stderr[done.stderr.index("perturbflow: bad input") :]
    raw = project_copy / "data" / "01_raw" / "perturbench_devel.h5ad"
    assert f"\n  {raw}:" in block  # the path whole, where the message starts
    flat = " ".join(block.split())
    assert f"{raw}: obs column 'perturbaton' (columns.pert_col) is missing." in flat
    assert "in node 'preprocess'" in block and "PERTURBFLOW_TRACEBACK=1" in block
    assert len(block.splitlines()) <= 10  # the message wrapped, where, fix, traceback hint
    assert "Traceback" not in done.stderr and "╭" not in done.stderr  # no (rich) traceback
    assert not (project_copy / "data" / "02_intermediate").exists()
    # Kedro's telemetry (on unless refused) writes a project_id into pyproject.toml; the
    # shipped .telemetry refuses it, so a first run leaves the tracked files as they were
    assert (project_copy / "pyproject.toml").read_bytes() == pyproject


def test_the_traceback_is_there_when_asked_for(project_copy: Path):
    done = _kedro_run(
        project_copy, "--params", "columns.pert_col=perturbaton", PERTURBFLOW_TRACEBACK="1"
    )
    assert done.returncode == 1
    assert "perturbflow: bad input" not in done.stderr
    assert "require_columns" in done.stderr  # the frame that raised


def test_a_kedro_run_stopped_by_sigterm_exits_non_zero_and_says_where_it_resumes(
    project_copy: Path,
):
    import signal
    import time

    from tests.pipelines.test_session import _run

    _run(project_copy, pipeline="preprocessing")
    _run(project_copy, pipeline="splits")
    args = ["--pipelines", "training", "--env", "test"]
    params = "training.max_steps=2000"  # long enough to be stopped in the first split
    cmd = [sys.executable, "-m", "kedro", "run", *args, "--params", params]
    environ = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    proc = subprocess.Popen(
        cmd, cwd=project_copy, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    last = project_copy / "data/06_models/st_training/fewshot/checkpoints/last.ckpt"
    deadline = time.time() + 300
    while not last.is_file() and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=300)[1].decode()
    # Lightning raises SystemExit with no code on SIGTERM: `kedro run` used to exit 0 here
    assert proc.returncode != 0
    block = stderr[stderr.index("perturbflow: run stopped") :]
    flat = " ".join(block.split())
    # the st_training work folder of the catalog (Kedro makes catalog paths absolute)
    assert "stopped by SIGTERM at step" in flat and f"resume from {last}" in flat
    assert "in node 'train_st_models'" in flat
    assert not (project_copy / "data/06_models/st_training/fewshot/model.pt").exists()
    assert not (project_copy / "data/06_models/st/fewshot").exists()  # nothing in the store
