"""The progress display: log lines off a terminal, one tqdm line over max_steps on one."""

from __future__ import annotations

import io
import logging
import re
import sys

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ProgressBar
from torch.utils.data import DataLoader, TensorDataset

from perturbflow.models.training.progress import (
    LogProgress,
    StepProgressBar,
    format_duration,
    progress_display,
)
from perturbflow.models.training.train import train_st
from perturbflow.models.training.trainer import build_trainer
from tests.models.support import loader_params, make_split, training_params
from tests.synthetic import COLUMNS

PROGRESS_LOGGER = "perturbflow.models.training.progress"


class FakeClock:
    """Seconds that only move when the tiny module trains a step."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TTY(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class Tiny(pl.LightningModule):
    """A linear model logging ``loss`` and ``val/pearson_delta`` like the ST module."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.clock = clock

    def training_step(self, batch, batch_idx):
        if self.clock is not None:
            self.clock.now += 1.0
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.lin(x), y)
        self.log("loss", loss, prog_bar=True, logger=False)
        return loss

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        self.log("val/pearson_delta", torch.tensor(0.5), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def tiny_loader() -> DataLoader:
    """Three batches a epoch, like the project's short sentence epochs."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(12, 4, generator=g), torch.randn(12, 1, generator=g))
    return DataLoader(data, batch_size=4)


def fit_tiny(display: ProgressBar, *, clock: FakeClock | None = None, val: bool = True) -> None:
    trainer = pl.Trainer(
        max_steps=12,
        val_check_interval=4 if val else None,
        check_val_every_n_epoch=None if val else 1,
        limit_val_batches=1 if val else 0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[display],
        accelerator="cpu",
    )
    trainer.fit(Tiny(clock), train_dataloaders=tiny_loader(), val_dataloaders=tiny_loader())


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]


def steps_of(lines: list[str]) -> list[int]:
    return [int(re.search(r"step (\d+)/", line).group(1)) for line in lines]


def test_every_step_is_logged_with_interval_zero(caplog):
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    fit_tiny(LogProgress("training tiny", interval_s=0))
    lines = progress_lines(caplog)
    # a line per step, one more after each validation (steps 4, 8, 12); the end adds none
    assert steps_of(lines) == [1, 2, 3, 4, 4, 5, 6, 7, 8, 8, 9, 10, 11, 12, 12]
    assert lines[0].startswith("training tiny: step 1/12 (8%), loss ")
    assert "ETA" not in lines[0]  # no rate yet at the first step
    assert all("steps/s, ETA " in line for line in lines[1:])
    assert "val pearson_delta" not in lines[3]
    assert lines[4].endswith("val pearson_delta 0.5")
    assert lines[-1].startswith("training tiny: step 12/12 (100%)")


def test_interval_is_honoured_with_a_fake_clock(caplog):
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    clock = FakeClock()  # one second per step
    fit_tiny(LogProgress("training tiny", interval_s=3.0, clock=clock), clock=clock, val=False)
    lines = progress_lines(caplog)
    assert steps_of(lines) == [1, 4, 7, 10, 12]  # first, every 3 s, the end
    # rate measured from the first step: 3 steps in 3 s, 8 steps left
    assert re.match(r"training tiny: step 4/12 \(33%\), 1 steps/s, ETA 8 s, loss \S+$", lines[1])


def test_terminal_bar_counts_steps_of_max_steps():
    stream = TTY()
    fit_tiny(StepProgressBar("training tiny", stream=stream))
    text = stream.getvalue()
    assert "training tiny: 100%" in text
    assert "12/12 [" in text  # the run's steps, not the epoch's 3 batches
    assert "/3 [" not in text
    assert "steps/s" in text
    assert "loss=" in text and "val_pearson_delta=0.5" in text
    assert "Epoch" not in text


def test_display_follows_the_stream():
    assert isinstance(progress_display("t", stream=TTY()), StepProgressBar)
    shown = progress_display("t", stream=io.StringIO(), interval_s=5)
    assert isinstance(shown, LogProgress) and shown.interval_s == 5


def test_duration_format():
    assert format_duration(68) == "68 s"
    assert format_duration(12 * 60) == "12 min"
    assert format_duration(2 * 3600 + 5 * 60) == "2 h 05 min"


@pytest.mark.parametrize("enabled", [True, False])
def test_build_trainer_wires_the_display(tmp_path, enabled, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: log lines
    settings = training_params(progress_bar=enabled)
    trainer, _, _ = build_trainer(tmp_path / "fewshot", settings, has_val=True)
    bars = [c for c in trainer.callbacks if isinstance(c, ProgressBar)]
    if enabled:
        assert len(bars) == 1 and isinstance(bars[0], LogProgress)
        assert bars[0].label == "training fewshot"
    else:
        assert bars == []


def test_training_run_logs_its_progress(planted, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file, not a terminal
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    split = make_split(planted["adata"], planted["path"], planted["table"], "zs")
    settings = training_params(
        progress_bar=True, max_steps=20, val_every_n_steps=10, ckpt_every_n_steps=10
    )
    train_st(split, columns=COLUMNS, loader=loader_params(), training=settings, run_dir=tmp_path)
    lines = progress_lines(caplog)
    name = tmp_path.name
    assert lines[0].startswith(f"training {name}: step 1/20 (5%), loss ")
    assert any(re.search(r"step 10/20 \(50%\), .*ETA .*val pearson_delta", x) for x in lines)
    assert re.search(r"step 20/20 \(100%\), \S+ steps/s, ETA 0 s, loss \S+, val", lines[-1])
