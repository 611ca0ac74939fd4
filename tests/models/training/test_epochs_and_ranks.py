"""Through a real Lightning Trainer: every epoch draws new sentences; DDP ranks share them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from perturbflow.models.training.train import train_st
from tests.models.support import loader_params, make_split, training_params
from tests.models.training.batch_recorder import BatchRecorder, read_records
from tests.synthetic import COLUMNS

REPO = Path(__file__).resolve().parents[3]


def _train_recording(planted, root: Path, max_steps: int) -> list[dict]:
    root.mkdir(parents=True, exist_ok=True)
    split = make_split(planted["adata"], planted["path"], planted["table"], "zs")
    recorder = BatchRecorder(root)
    params = training_params(max_steps=max_steps, val_every_n_steps=10, ckpt_every_n_steps=10)
    train_st(
        split,
        columns=COLUMNS,
        loader=loader_params(batch_size=8),
        training=params,
        run_dir=root / "run",
        callbacks=[recorder],
    )
    return recorder.records


def test_each_epoch_draws_new_sentences_and_the_same_seed_gives_the_same_run(planted, tmp_path):
    first = _train_recording(planted, tmp_path / "a", max_steps=30)
    by_epoch = defaultdict(list)
    for record in first:
        by_epoch[record["epoch"]].append(record["rows"])
    assert len(by_epoch) >= 3, "the test needs several epochs"
    # batch 0 differs between epochs: Lightning's set_epoch reached the sampler
    assert by_epoch[0][0] != by_epoch[1][0] and by_epoch[1][0] != by_epoch[2][0]
    # and an epoch is not a reshuffle of the last one: the sentences themselves are new
    sentences = [{tuple(sorted(r)) for r in batches} for batches in by_epoch.values()]
    assert sentences[0] != sentences[1]
    again = _train_recording(planted, tmp_path / "b", max_steps=30)
    assert [r["rows"] for r in again] == [r["rows"] for r in first]


def _wait_for_checkpoint(last: Path, step: int, proc: subprocess.Popen, deadline: float) -> None:
    while time.time() < deadline:
        try:
            if int(torch.load(last, weights_only=True)["global_step"]) >= step:
                return
        except Exception:  # absent, or half-written
            pass
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint at step {step} in time")


@pytest.mark.slow
def test_two_ddp_processes_share_each_epoch_train_and_resume_after_a_kill(planted, tmp_path):
    (tmp_path / "screen.h5ad").write_bytes(Path(planted["path"]).read_bytes())
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(29500 + os.getpid() % 1000),
    }
    cmd = [sys.executable, "-m", "tests.models.training.batch_recorder", str(tmp_path), "40", "2"]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    _wait_for_checkpoint(last, 10, proc, time.time() + 300)
    os.killpg(proc.pid, signal.SIGKILL)  # both ranks die at once, mid-run
    proc.wait()
    killed_at = int(torch.load(last, weights_only=True)["global_step"])
    assert 10 <= killed_at < 40 and not (tmp_path / "run" / "model.pt").exists()

    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 40
    assert summary["resumed_from"].endswith("last.ckpt")

    records = read_records(tmp_path)
    assert {r["rank"] for r in records} == {0, 1}
    resumed = [r for r in records if r["step"] >= killed_at]
    by_step: dict[int, dict[int, list[int]]] = defaultdict(dict)
    for record in resumed:
        by_step[record["step"]][record["rank"]] = record["rows"]
    # both ranks resumed at the same step and ran to the end together
    assert set(by_step) == set(range(killed_at, 40))
    per_rank = len(resumed[0]["rows"])
    for ranks in by_step.values():
        assert set(ranks) == {0, 1}
        # each global step trains on twice the cells of one rank's batch
        assert len(ranks[0]) == len(ranks[1]) == per_rank
    # the ranks' sentences are disjoint within every epoch (cells can repeat: sentences are
    # drawn with replacement within a group, so a cell may sit in two sentences)
    by_epoch: dict[tuple[int, int], set] = defaultdict(set)
    for record in resumed:
        by_epoch[(record["epoch"], record["rank"])] |= {tuple(s) for s in record["sentences"]}
    for epoch in {e for e, _ in by_epoch}:
        shared = by_epoch.get((epoch, 0), set()) & by_epoch.get((epoch, 1), set())
        assert not shared, f"epoch {epoch}: {len(shared)} sentences on both ranks"

    # the model trained: the held-out planted effect is predicted from controls
    from perturbflow.models.inference.predict import predict_cells
    from perturbflow.models.runs.run_dir import load_run

    split = make_split(planted["adata"], planted["path"], planted["table"], "zs")
    data = split.data
    key = ("ds.C", "p3")
    pred = predict_cells(load_run(tmp_path / "run"), data, {key: 60}, seed=0)
    ctrl = data.X[data.control_rows("ds.C")].mean(axis=0)
    real = data.X[data.perturbation_rows("ds.C", "p3", "test")].mean(axis=0) - ctrl
    assert np.corrcoef(pred.cells[key].mean(axis=0) - ctrl, real)[0, 1] > 0.7
