"""The ``perturbflow`` entry point: library commands, ``run`` and the overview."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _perturbflow(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    return subprocess.run(
        [sys.executable, "-m", "perturbflow", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_the_commands_then_the_run_options():
    out = _perturbflow("--help")
    assert out.returncode == 0, out.stderr
    for command in ("perturbflow train", "perturbflow infer", "perturbflow run"):
        assert command in out.stdout
    assert "--pipeline" in out.stdout  # kedro run's options follow


def test_run_is_kedro_run_and_library_commands_have_their_own_parser():
    out = _perturbflow("run", "--help")
    assert out.returncode == 0, out.stderr
    assert "--pipeline" in out.stdout and "unexpected extra argument" not in out.stderr
    out = _perturbflow("infer", "--help")
    assert out.returncode == 0 and "--control-offset" in out.stdout


def test_an_unknown_command_is_refused_with_the_known_ones():
    out = _perturbflow("trian", "--split", "fewshot")
    assert out.returncode == 2
    assert "unknown command 'trian'" in out.stderr and "'train', 'infer', 'run'" in out.stderr


def test_train_names_a_missing_input_or_split_before_any_work(tmp_path, capsys):
    import pandas as pd

    from perturbflow.commands import run_cli

    conf = ["--conf", str(ROOT / "conf")]
    missing = str(tmp_path / "splits.parquet")
    assert run_cli(["train", "--split", "fewshot", *conf, "--split-table", missing]) == 2
    err = capsys.readouterr().err
    assert f"--split-table {missing}: no such file" in err
    assert "kedro run --pipelines splits" in err
    table = tmp_path / "table.parquet"
    pd.DataFrame({"perturbation": ["a"], "is_control": [False], "fewshot": ["train"]}).to_parquet(
        table
    )
    args = ["train", "--split", "fewshoot", *conf, "--split-table", str(table)]
    assert run_cli(args) == 2
    assert "--split 'fewshoot' is not a column" in capsys.readouterr().err
    args = ["train", "--split", "fewshot", *conf, "--split-table", str(table)]
    args += ["--genes", str(tmp_path / "genes.json")]
    assert run_cli(args) == 2
    assert "--genes" in capsys.readouterr().err


def test_train_puts_ensemble_members_beside_the_first_run():
    from perturbflow.commands import member_run_dir

    assert member_run_dir("runs/<split>", "fewshot", "fewshot") == "runs/fewshot"
    assert member_run_dir("runs/<split>", "fewshot", "fewshot.seed1") == "runs/fewshot.seed1"
    assert member_run_dir("runs/mine", "fewshot", "fewshot") == "runs/mine"
    assert member_run_dir("runs/mine", "fewshot", "fewshot.seed2") == "runs/mine.seed2"
