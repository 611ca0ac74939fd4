"""Catalog datasets of the models: trained and finetuned runs, MMD shifts, work folders.

A trained ST model is a folder (:mod:`perturbflow.models.runs.run_dir`): its configuration,
gene list, maps, weights and summary. Training writes checkpoints into a *work folder* while
it runs (so that a killed run resumes there), and the finished model is then saved into the
catalog's model store, one sub-folder per key (the split name):

```
06_models/st_training/<split>/   work folder: checkpoints/, logs/, the run files (resume)
06_models/st/<split>/            the model (RunsDataset): what prediction, finetuning,
                                 adaptation and ``perturbflow infer --run`` read
```

Kedro's own datasets save one object to one file; a run is a folder of a dozen files and a
store holds one run per split, which none of kedro-datasets' types writes (a
``PartitionedDataset`` writes one file per key), hence these. Nothing here unpickles: runs
are read with ``torch.load(weights_only=True)`` (:func:`~perturbflow.io_utils.load_tensors`).
The heavy imports (torch, the model code) happen on first load or save only, so listing the
catalog stays fast.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from kedro.io.core import AbstractDataset, DatasetError

logger = logging.getLogger(__name__)

# files of a run folder that belong to the training, not to the model
_TRAINING_ONLY = ("checkpoints",)


def _rank() -> int:
    """This process's DDP rank (0 outside DDP): only rank 0 writes the store."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def replace_folder(source_files: Callable[[Path], None], target: Path) -> None:
    """Fill a fresh folder with ``source_files(tmp)``, then swap it in for ``target``.

    The new folder is complete before the old one moves: a failure while filling it leaves
    the old folder untouched, a failure of the swap puts the old folder back, and a hard
    crash between the two renames leaves both beside ``target`` as hidden folders
    (``.<name>.old-*``, ``.<name>.tmp-*``); never a mix of the two.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    stamp = f"{os.getpid()}-{time.time_ns()}"
    tmp = target.with_name(f".{target.name}.tmp-{stamp}")
    old = target.with_name(f".{target.name}.old-{stamp}")
    try:
        tmp.mkdir()
        source_files(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        if old.exists():
            old.rename(target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _copy_model_files(run_dir: Path) -> Callable[[Path], None]:
    """Copy a run folder's model files (everything but its checkpoints) into a folder."""

    def copy(into: Path) -> None:
        for item in sorted(run_dir.iterdir()):
            if item.name in _TRAINING_ONLY or item.name.startswith("."):
                continue
            if item.is_dir():
                shutil.copytree(item, into / item.name)
            else:
                shutil.copy2(item, into / item.name)

    return copy


class StoredModels(Mapping[str, Any]):
    """The models of a store folder, read on first access (a read-only mapping).

    Keys are the sub-folders that hold a finished model; ``store[key]`` reads it with the
    store's reader (:func:`~perturbflow.models.runs.run_dir.load_run`, ...) once.

    Attributes:
        path: The store folder.
    """

    def __init__(self, path: Path, reader: Callable[[Path], Any], marker: str, what: str):
        """Read the models of ``path`` with ``reader``.

        Args:
            path: The store folder.
            reader: Reads one model folder.
            marker: The file every finished model folder has (e.g. ``run.json``).
            what: What a model is called in messages.
        """
        self.path = path
        self._reader = reader
        self._marker = marker
        self._what = what
        self._cache: dict[str, Any] = {}

    def folder(self, key: str) -> Path:
        """The folder of model ``key`` (it may not exist)."""
        return self.path / key

    def __getitem__(self, key: str) -> Any:
        if key not in self._cache:
            if not (self.folder(key) / self._marker).is_file():
                raise KeyError(
                    f"{self.path} holds no {self._what} {key!r} (it has {sorted(self) or 'none'})"
                    "; run the pipeline that makes it first."
                )
            self._cache[key] = self._reader(self.folder(key))
        return self._cache[key]

    def named_by(self, key: str, param: str) -> Any:
        """Model ``key``, chosen by the params key ``param`` (named when it is missing).

        Raises:
            InputError: The store has no such model.
        """
        from perturbflow.exceptions import InputError

        try:
            return self[key]
        except KeyError as err:
            raise InputError(f"{param} is {key!r}: {err.args[0]}") from err

    def __iter__(self) -> Iterator[str]:
        if not self.path.is_dir():
            return iter(())
        return iter(
            sorted(
                p.name
                for p in self.path.iterdir()
                if p.is_dir() and not p.name.startswith(".") and (p / self._marker).is_file()
            )
        )

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"StoredModels({str(self.path)!r}, {list(self)})"


def _load_st(path: Path) -> Any:
    from perturbflow.models.runs.run_dir import load_run

    return load_run(path)


def _load_finetuned(path: Path) -> Any:
    from perturbflow.models.runs.adapter import load_finetuned

    return load_finetuned(path)


class RunsDataset(AbstractDataset[Mapping[str, Any], StoredModels]):
    """A folder of trained (``kind: st``) or finetuned (``kind: finetuned``) runs, by key.

    ``save`` takes ``{key: run folder}`` (a path, or a loaded
    :class:`~perturbflow.models.runs.run_dir.TrainedRun`, whose ``.path`` is used) and
    writes each run's model files (all but its checkpoints) into ``<path>/<key>/``,
    replacing that key's previous model and keeping the other keys'. ``load`` returns a
    :class:`StoredModels` mapping that reads a run on first access: a finetuned run is
    rebuilt on its base run, as :func:`~perturbflow.models.runs.adapter.load_finetuned` does.

    Example (catalog)::

        st_models:
          type: perturbflow.datasets.RunsDataset
          path: data/06_models/st
    """

    def __init__(
        self,
        *,
        path: str,
        kind: Literal["st", "finetuned"] = "st",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Args: the store folder, the kind of run it holds, Kedro metadata."""
        if kind not in ("st", "finetuned"):
            raise DatasetError(f"RunsDataset kind must be 'st' or 'finetuned', not {kind!r}.")
        self._path = Path(path)
        self._kind = kind
        self.metadata = metadata

    def load(self) -> StoredModels:
        """The runs of the folder (read lazily)."""
        reader = _load_st if self._kind == "st" else _load_finetuned
        return StoredModels(self._path, reader, "run.json", f"{self._kind} run")

    def save(self, data: Mapping[str, Any]) -> None:
        """Write each run's model files into ``<path>/<key>/`` (rank 0 only under DDP)."""
        if _rank() != 0:
            return
        for key, run in data.items():
            source = Path(getattr(run, "path", run))
            if not (source / "run.json").is_file():
                raise DatasetError(f"{source} is not a finished run (no run.json): not saved.")
            target = self._path / key
            if (target / "checkpoints").is_dir():
                # a whole run folder (written here before the store had work folders): its
                # checkpoints are the only copy, so it is moved aside, never deleted
                aside = target.with_name(f"{key}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
                logger.warning("%s holds a run with checkpoints: moved to %s.", target, aside)
                target.rename(aside)
            replace_folder(_copy_model_files(source), target)

    def _exists(self) -> bool:
        return len(self.load()) > 0

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "kind": self._kind}


class ShiftsDataset(AbstractDataset[Mapping[str, Any], StoredModels]):
    """A folder of MMD shifts (:mod:`perturbflow.adaptation.store`), one per key.

    ``save`` takes ``{key: MMDShift}`` and writes ``<path>/<key>/shift.pt`` and
    ``shift.json`` as one folder swap; ``load`` returns the shifts, read on first access
    (each still to be checked against the run it is used with:
    :meth:`~perturbflow.adaptation.store.MMDShift.check_run`).
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        """Args: the store folder, Kedro metadata."""
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> StoredModels:
        """The shifts of the folder (read lazily)."""
        from perturbflow.adaptation.store import META, read_shift

        return StoredModels(self._path, read_shift, META, "MMD shift")

    def save(self, data: Mapping[str, Any]) -> None:
        """Write each shift into ``<path>/<key>/``."""
        from perturbflow.adaptation.store import write_shift

        for key, shift in data.items():
            replace_folder(lambda tmp, s=shift: write_shift(tmp, s), self._path / key)

    def _exists(self) -> bool:
        return len(self.load()) > 0

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class WorkFolderDataset(AbstractDataset[None, Path]):
    """A folder a node works in and keeps between runs: loads as its path (created).

    Training keeps its checkpoints in one (a rerun resumes from them), the pairing cache
    its pairings. Kedro draws it as the node's input, so the location lives in the
    catalog rather than in parameters. Nodes write into it themselves: ``save`` is refused.
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        """Args: the folder, Kedro metadata."""
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> Path:
        """The folder (created when missing)."""
        self._path.mkdir(parents=True, exist_ok=True)
        return self._path

    def save(self, data: None) -> None:
        """Refused: the node that uses the folder writes into it."""
        raise DatasetError(f"{self._path} is a work folder: nodes write into it, not the catalog.")

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class OptunaStorageDataset(AbstractDataset[None, Any]):
    """Where Optuna studies live: an RDB URL (or a sqlite file per study) and trial folders.

    Loads a :class:`~perturbflow.tuning.study.StudyStorage`. With no ``url`` each study is
    the sqlite file ``<path>/<study_name>.db``; a ``url`` (``postgresql://...``, best given
    through ``credentials``) lets several machines share one study. Each trial's finetuned
    run is kept under ``<path>/<study_name>/trial-NNNN``. The sweep writes trial by trial
    (a killed sweep resumes), so ``save`` is refused.
    """

    def __init__(
        self,
        *,
        path: str,
        url: str | None = None,
        credentials: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Args: the folder, a database URL (or ``credentials: {url: ...}``), metadata."""
        self._path = Path(path)
        self._url = (credentials or {}).get("url", url)
        self.metadata = metadata

    def load(self) -> Any:
        """The storage (its folder created)."""
        from perturbflow.tuning.study import StudyStorage

        self._path.mkdir(parents=True, exist_ok=True)
        return StudyStorage(folder=self._path, url=self._url)

    def save(self, data: None) -> None:
        """Refused: trials are written to the storage as they end."""
        raise DatasetError(f"{self._path}: the sweep writes its trials, not the catalog.")

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "url": "<credentials>" if self._url else None}
