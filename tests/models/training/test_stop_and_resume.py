"""A stopped run says so and resumes; broken checkpoints; metrics.csv kept across resumes."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from perturbflow.exceptions import InputError
from perturbflow.models.training.fit import RunCSVLogger, resume_checkpoint
from perturbflow.models.training.train import train_st
from tests.models.support import loader_params, make_split, training_params
from tests.models.training.training_process import start_training
from tests.synthetic import COLUMNS


def test_sigterm_stops_with_an_error_and_the_rerun_resumes(planted, tmp_path):
    running = start_training(planted["path"], tmp_path, max_steps=200, until_step=20)
    proc, last = running.proc, running.last
    proc.send_signal(signal.SIGTERM)  # what a scheduler (SLURM, Kubernetes) sends
    out = proc.communicate(timeout=120)[0].decode()
    # it used to exit 0 (Lightning's SIGTERMException is a SystemExit with no code)
    assert proc.returncode != 0, out
    assert "stopped by SIGTERM at step" in out and f"resume from {last}" in out
    stopped_at = torch.load(last, weights_only=True)["global_step"]
    assert 20 <= stopped_at < 200
    # the checkpoint is the step it stopped at, not the last periodic one
    assert f"at step {stopped_at} of 200" in out
    assert not (tmp_path / "run" / "model.pt").exists()
    done = running.rerun()
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary["steps"] == 200 and summary["resumed_from"].endswith("last.ckpt")
    metrics = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    assert metrics.dropna(subset=["train/loss"])["step"].tolist() == list(range(9, 200, 10))


@pytest.fixture
def checkpoints(trained_run, tmp_path) -> Path:
    """A copy of a finished run's checkpoints: step=50, step=100, step=150, last, best."""
    folder = tmp_path / "run" / "checkpoints"
    shutil.copytree(trained_run["run_dir"] / "checkpoints", folder)
    return folder


def test_an_intact_last_checkpoint_is_the_resume_point(checkpoints):
    resume = resume_checkpoint(checkpoints)
    assert resume.path == checkpoints / "last.ckpt" and resume.step == 150


def test_a_truncated_last_checkpoint_falls_back_to_the_newest_intact_one(checkpoints, caplog):
    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # a copy killed halfway, a full disk
    resume = resume_checkpoint(checkpoints)
    assert resume.path == checkpoints / "step=150.ckpt" and resume.step == 150
    assert str(last) in caplog.text and "truncated or corrupt" in caplog.text


def test_no_readable_checkpoint_says_how_to_start_afresh(checkpoints):
    for path in checkpoints.glob("*.ckpt"):
        path.write_bytes(np.random.default_rng(1).bytes(64))
    with pytest.raises(InputError) as err:
        resume_checkpoint(checkpoints)
    message = str(err.value)
    assert str(checkpoints / "last.ckpt") in message and "move" in message
    assert "resume=false" in message


def test_a_resumed_csv_log_keeps_the_rows_before_the_resume_step(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    rows = [{"step": s, "train/loss": 1.0 / (s + 1)} for s in range(9, 120, 10)]
    rows.append({"step": 99, "val/pearson_delta": 0.5})
    pd.DataFrame(rows).to_csv(logs / "metrics.csv", index=False)
    log = RunCSVLogger(str(tmp_path), resume_step=100, flush_every=10)
    log.log_metrics({"train/loss": 0.01}, step=109)
    log.save()
    kept = pd.read_csv(logs / "metrics.csv")
    assert kept.dropna(subset=["train/loss"])["step"].tolist() == [*range(9, 100, 10), 109]
    assert kept.dropna(subset=["val/pearson_delta"])["step"].tolist() == [99]


def test_a_fresh_csv_log_starts_empty(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    pd.DataFrame({"step": [9], "train/loss": [1.0]}).to_csv(logs / "metrics.csv", index=False)
    log = RunCSVLogger(str(tmp_path), resume_step=None, flush_every=10)
    log.log_metrics({"train/loss": 0.5}, step=9)
    log.save()
    assert pd.read_csv(logs / "metrics.csv")["train/loss"].tolist() == [0.5]


class _Payload:
    """A pickle that would create a file when unpickled (what a malicious model.pt does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _corrupt(kind: str, path: Path, marker: Path) -> None:
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))  # seeded: the same noise
    else:
        torch.save({"net.weight": torch.zeros(2), "payload": _Payload(marker)}, path)


@pytest.mark.parametrize("kind", ["truncated", "random", "pickle"])
def test_a_corrupt_model_file_is_named_and_never_run(trained_run, tmp_path, kind):
    from perturbflow.models.runs.run_dir import load_run

    run = tmp_path / "run"
    shutil.copytree(trained_run["run_dir"], run, ignore=shutil.ignore_patterns("checkpoints"))
    marker = tmp_path / "code-was-run"
    _corrupt(kind, run / "model.pt", marker)
    with pytest.raises(InputError) as err:
        load_run(run)
    message = str(err.value)
    assert message.startswith(f"{run / 'model.pt'}: cannot be read as the model's weights")
    assert "rerun the training" in message
    assert "weights_only=False" not in message or "do not pass weights_only=False" in message
    assert not marker.exists()


@pytest.fixture
def split(planted):
    """The planted screen's zero-shot split, trained in process by the tests below."""
    return make_split(planted["adata"], planted["path"], planted["table"], "zs")


def test_a_checkpoint_holds_its_steps_validation_and_its_row_is_on_disk(split, tmp_path):
    # a run killed after a checkpoint resumes from it and never validates its steps again:
    # a step that validates is checkpointed after its validation, whose row is on disk then
    # (Lightning used to save the step checkpoint first: a kill during that validation lost
    # the row for good, a CI failure of test_killed_training_resumes_from_last)
    metrics = tmp_path / "run" / "logs" / "metrics.csv"
    seen: dict[int, list[int]] = {}

    class ReadTheFile(Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            frame = pd.read_csv(metrics) if metrics.is_file() else pd.DataFrame()
            rows = []
            if "val/pearson_delta" in frame:
                rows = frame["step"][frame["val/pearson_delta"].notna()].tolist()
            seen.setdefault(trainer.global_step, rows)  # the first save of the step

    params = training_params(max_steps=30, val_every_n_steps=15, ckpt_every_n_steps=5)
    train_st(
        split,
        columns=COLUMNS,
        loader=loader_params(),
        training=params,
        run_dir=tmp_path / "run",
        callbacks=[ReadTheFile()],
    )
    assert sorted(seen) == [5, 10, 15, 20, 25, 30]
    for step, on_disk in seen.items():
        assert on_disk == list(range(14, step, 15)), step
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step=*.ckpt"))
    assert names == sorted(f"step={n}.ckpt" for n in (5, 10, 15, 20, 25, 30))


def test_keep_step_checkpoints_prunes_the_oldest_and_a_resumed_run_goes_on(split, tmp_path):
    # every periodic checkpoint kept filled a disk during a benchmark (43 MB each for a
    # 256-wide model, a failed write killed the run): keep_step_checkpoints keeps the newest
    class Crash(Callback):
        def on_train_batch_end(self, trainer, *args, **kwargs):
            if trainer.global_step == 17:
                raise RuntimeError("crashed at step 17")

    params = training_params(
        max_steps=30, val_every_n_steps=15, ckpt_every_n_steps=5, keep_step_checkpoints=2
    )
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"

    def kept() -> list[str]:
        return sorted(p.name for p in ckpts.glob("*.ckpt"))

    common = dict(columns=COLUMNS, loader=loader_params(), training=params, run_dir=run)
    with pytest.raises(RuntimeError, match="crashed at step 17"):
        train_st(split, callbacks=[Crash()], **common)
    assert kept() == ["best.ckpt", "last.ckpt", "step=10.ckpt", "step=15.ckpt"]
    summary = train_st(split, **common)
    assert summary["steps"] == 30 and summary["resumed_from"].endswith("last.ckpt")
    # the resumed run pruned the files of the run it resumed (step=15), not only its own
    assert kept() == ["best.ckpt", "last.ckpt", "step=25.ckpt", "step=30.ckpt"]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 30


def test_keep_step_checkpoints_below_one_is_refused_before_training(split, tmp_path):
    params = training_params(max_steps=10, keep_step_checkpoints=0)
    with pytest.raises(InputError, match="training.keep_step_checkpoints is 0"):
        train_st(
            split,
            columns=COLUMNS,
            loader=loader_params(),
            training=params,
            run_dir=tmp_path / "run",
        )
    assert not (tmp_path / "run" / "checkpoints").exists()
