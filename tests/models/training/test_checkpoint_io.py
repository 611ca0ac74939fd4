"""Atomic checkpoints: a write that dies half-way leaves the previous checkpoint intact."""

from __future__ import annotations

import pytest
import torch

from perturbflow.models.training import checkpoint_io
from perturbflow.models.training.checkpoint_io import AtomicCheckpointIO


def test_checkpoint_is_replaced_only_when_complete(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 10, "w": torch.ones(3)}, target)
    assert torch.load(target, weights_only=True)["global_step"] == 10

    def dying_save(obj, path):  # writes part of the file, then the process "dies"
        with open(path, "wb") as handle:
            handle.write(b"PK\x03\x04 truncated")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 20}, target)
    assert torch.load(target, weights_only=True)["global_step"] == 10
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no temporary left


def test_storage_options_are_refused(tmp_path):
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "x.ckpt", storage_options={"a": 1})


def test_a_full_disk_is_named_with_the_file_and_the_way_to_resume(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "step=200.ckpt"
    io.save_checkpoint({"global_step": 100}, tmp_path / "checkpoints" / "last.ckpt")

    def full_disk(obj, path):  # what torch raised when this machine's disk filled up
        with open(path, "wb") as handle:
            handle.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 19980096")

    monkeypatch.setattr(checkpoint_io.torch, "save", full_disk)
    with pytest.raises(OSError) as caught:
        io.save_checkpoint({"global_step": 200}, target)
    message = str(caught.value)
    assert str(target) in message and "MiB free" in message and "unexpected pos" in message
    assert "keep_step_checkpoints" in message and "rerun to resume" in message
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no partial file
