"""A training in a child process, started and waited on until it has saved a checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

TRAIN_SCRIPT = """
import sys
from tests.models.support import loader_params, make_split, training_params
from tests.synthetic import COLUMNS, make_screen, split_table
import anndata as ad
from perturbflow.models.training.train import train_st
root = sys.argv[1]
adata = ad.read_h5ad(root + "/screen.h5ad")
table = split_table(adata, {"zs": {("C", "p3"): "test", ("B", "p2"): "val"}})
split = make_split(adata, root + "/screen.h5ad", table, "zs")
params = training_params(max_steps=int(sys.argv[2]), val_every_n_steps=20,
                         ckpt_every_n_steps=10)
print(train_st(split, columns=COLUMNS, loader=loader_params(), training=params,
               run_dir=root + "/run"))
"""


def saved_step(checkpoint: Path) -> int:
    """The global step a checkpoint holds; -1 while it is missing or being written."""
    try:
        return int(torch.load(checkpoint, weights_only=True)["global_step"])
    except Exception:  # absent, or half-written by the running training
        return -1


@dataclass
class TrainingProcess:
    """A running training of the planted screen (``run/`` under ``root``)."""

    proc: subprocess.Popen
    cmd: list[str]
    env: dict[str, str]
    root: Path

    @property
    def last(self) -> Path:
        """The run's ``last.ckpt``."""
        return self.root / "run" / "checkpoints" / "last.ckpt"

    def rerun(self) -> subprocess.CompletedProcess:
        """The same command again, to its end."""
        return subprocess.run(self.cmd, env=self.env, capture_output=True, text=True, timeout=600)


def start_training(screen: str | Path, root: Path, *, max_steps: int, until_step: int):
    """Start ``train_st`` on ``screen`` in a child process; return once ``last.ckpt`` holds
    ``until_step`` or later (waiting for the file alone races with its write)."""
    (root / "screen.h5ad").write_bytes(Path(screen).read_bytes())
    script = root / "train.py"
    script.write_text(TRAIN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    cmd = [sys.executable, str(script), str(root), str(max_steps)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    running = TrainingProcess(proc, cmd, env, root)
    deadline = time.time() + 240
    while time.time() < deadline and saved_step(running.last) < until_step:
        time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read().decode()
    return running
