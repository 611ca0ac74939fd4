"""A Lightning callback that records every training batch's perturbed rows, per rank.

Used by the epoch and DDP tests (and runnable as a script: ``python -m
tests.models.training.batch_recorder ROOT MAX_STEPS DEVICES`` trains the planted screen in ``ROOT``
with ``DEVICES`` CPU processes over gloo, recording into ``ROOT/batches-rank<R>.jsonl``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl


class BatchRecorder(pl.Callback):
    """Appends each training batch's ``epoch, batch, step, rank, rows, sentences`` to JSONL.

    Args:
        root: Folder of the files (one per rank: ``batches-rank<R>.jsonl``).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.records: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        record = {
            "epoch": int(trainer.current_epoch),
            "batch": int(batch_idx),
            "step": int(trainer.global_step),
            "rank": int(trainer.global_rank),
            "rows": batch["pert_rows"].reshape(-1).tolist(),
            "sentences": batch["pert_rows"].tolist(),
        }
        self.records.append(record)
        with open(self.root / f"batches-rank{trainer.global_rank}.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_records(root: str | Path) -> list[dict]:
    """Every record written under ``root``, all ranks."""
    out = []
    for path in sorted(Path(root).glob("batches-rank*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines() if line]
    return out


def main(root: str, max_steps: int, devices: int) -> None:
    """Train the planted screen of ``root`` on ``devices`` CPU processes (DDP over gloo)."""
    import anndata as ad

    from perturbflow.models.training.train import train_st
    from tests.models.support import loader_params, make_split, training_params
    from tests.synthetic import COLUMNS, split_table

    adata = ad.read_h5ad(f"{root}/screen.h5ad")
    table = split_table(adata, {"zs": {("C", "p3"): "test", ("B", "p2"): "val"}})
    split = make_split(adata, f"{root}/screen.h5ad", table, "zs")
    params = training_params(
        max_steps=max_steps,
        val_every_n_steps=10,
        ckpt_every_n_steps=5,
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        cpu_threads=1,
    )
    summary = train_st(
        split,
        columns=COLUMNS,
        loader=loader_params(batch_size=4),
        training=params,
        run_dir=f"{root}/run",
        callbacks=[BatchRecorder(root)],
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
