"""The model stores of the catalog: runs, MMD shifts, work folders and the Optuna storage."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from kedro.io.core import DatasetError

from perturbflow.adaptation import GeneShift, MMDShift
from perturbflow.datasets import (
    OptunaStorageDataset,
    RunsDataset,
    ShiftsDataset,
    WorkFolderDataset,
)
from perturbflow.exceptions import InputError
from perturbflow.models.runs.run_dir import load_run


def test_a_saved_run_is_its_model_files_and_loads_back_typed(trained_run, tmp_path):
    store = RunsDataset(path=str(tmp_path / "st"))
    assert dict(store.load()) == {}
    run = load_run(trained_run["run_dir"])
    store.save({"zs": run})
    saved = tmp_path / "st" / "zs"
    assert (saved / "model.pt").is_file() and (saved / "logs" / "metrics.csv").is_file()
    assert not (saved / "checkpoints").exists()  # training state stays in the work folder
    loaded = store.load()
    assert list(loaded) == ["zs"] and loaded.folder("zs") == saved
    again = loaded["zs"]
    assert again.digest == run.digest and again.genes == run.genes
    for name, tensor in run.net.state_dict().items():
        torch.testing.assert_close(again.net.state_dict()[name], tensor)
    with pytest.raises(InputError, match=r"training.base is 'nope'.*holds no st run 'nope'.*zs"):
        loaded.named_by("nope", "training.base")


def test_saving_replaces_one_key_keeps_the_others_and_never_deletes_checkpoints(
    trained_run, tmp_path
):
    root = tmp_path / "st"
    store = RunsDataset(path=str(root))
    run = load_run(trained_run["run_dir"])
    store.save({"a": run, "b": run})
    (root / "a" / "stale.txt").write_text("from the previous model")
    store.save({"a": run})
    assert not (root / "a" / "stale.txt").exists() and (root / "b" / "model.pt").is_file()
    # a whole run folder (checkpoints and all) where a model goes is moved aside, not lost
    shutil.rmtree(root / "b")
    shutil.copytree(trained_run["run_dir"], root / "b")
    store.save({"b": run})
    aside = [p for p in root.iterdir() if p.name.startswith("b.previous-")]
    assert len(aside) == 1 and (aside[0] / "checkpoints").is_dir()
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith("b.previous")) == [
        "a",
        "b",
    ]


def test_an_unfinished_run_is_refused_and_leaves_the_store_alone(trained_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(trained_run["run_dir"], unfinished)
    (unfinished / "run.json").unlink()
    store = RunsDataset(path=str(tmp_path / "st"))
    with pytest.raises(DatasetError, match="not a finished run"):
        store.save({"zs": unfinished})
    assert not (tmp_path / "st" / "zs").exists()


def test_only_rank_zero_writes_the_store(trained_run, tmp_path, monkeypatch):
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    RunsDataset(path=str(tmp_path / "st")).save({"zs": load_run(trained_run["run_dir"])})
    assert not (tmp_path / "st").exists()


def test_shifts_round_trip_and_work_folders_and_storage(tmp_path):
    shift = GeneShift(3, scale=True)
    with torch.no_grad():
        shift.shift.copy_(torch.tensor([0.5, -1.0, 2.0]))
    meta = {"kind": shift.kind, "genes": ["g0", "g1", "g2"], "run_digest": "x"}
    store = ShiftsDataset(path=str(tmp_path / "shifts"))
    store.save({"T": MMDShift(shift, meta)})
    assert json.loads((tmp_path / "shifts/T/shift.json").read_text())["kind"] == "shift_scale"
    loaded = store.load()["T"]
    torch.testing.assert_close(loaded.shift.shift, shift.shift)
    assert loaded.path == tmp_path / "shifts" / "T"

    work = WorkFolderDataset(path=str(tmp_path / "work" / "st"))
    assert work.load() == tmp_path / "work" / "st" and (tmp_path / "work" / "st").is_dir()
    with pytest.raises(DatasetError, match="work folder"):
        work.save(tmp_path)
    storage = OptunaStorageDataset(path=str(tmp_path / "optuna")).load()
    assert storage.study_url("s") == f"sqlite:///{tmp_path}/optuna/s.db"
    shared = OptunaStorageDataset(path="x", credentials={"url": "postgresql://u@h/db"}).load()
    assert shared.study_url("s") == "postgresql://u@h/db"


def test_a_failed_swap_keeps_the_previous_folder(tmp_path, monkeypatch):
    from pathlib import Path

    from perturbflow.datasets.model_store import replace_folder

    target = tmp_path / "st" / "zs"
    replace_folder(lambda d: (d / "model.pt").write_text("old"), target)
    with pytest.raises(RuntimeError, match="disk full"):  # failing while filling the new one
        replace_folder(lambda d: (_ for _ in ()).throw(RuntimeError("disk full")), target)
    assert (target / "model.pt").read_text() == "old"
    real_rename = Path.rename

    def rename(self, dest):  # the swap itself fails: the old folder goes back
        if ".tmp-" in self.name:
            raise OSError("cross-device link")
        return real_rename(self, dest)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="cross-device"):
        replace_folder(lambda d: (d / "model.pt").write_text("new"), target)
    monkeypatch.undo()
    assert (target / "model.pt").read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["zs"]  # nothing left behind
