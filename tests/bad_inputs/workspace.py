"""The project copy and files the bad-input cases run on, and a snapshot of what they wrote."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from perturbflow.commands import run_cli
from perturbflow.exceptions import InputError
from tests.models.inference.inference_data import infer_args
from tests.pipelines.support import copy_project

RAW = Path("data") / "01_raw" / "perturbench_devel.h5ad"
FEWSHOT = Path("conf") / "base" / "splits" / "fewshot.toml"


@dataclass
class Workspace:
    """A project copy (preprocessed once) and a trained run with an inference input.

    Attributes:
        root: The project copy (the working directory of its Kedro sessions).
        run_dir: A copy of a trained ST run (cases may break its files).
        infer_input: A valid ``perturbflow infer`` input for that run.
        infer_args: The ``perturbflow infer`` arguments that succeed on it (no output).
    """

    root: Path
    run_dir: Path
    infer_input: Path
    infer_args: list[str]

    @property
    def raw(self) -> Path:
        """The shipped screen the default pipeline reads (cases replace it)."""
        return self.root / RAW

    def run(self, pipeline: str, **params: Any) -> None:
        """``kedro run --env test --pipelines PIPELINE --params ...`` in the project copy."""
        bootstrap_project(self.root)
        with KedroSession.create(project_path=self.root, env="test", runtime_params=params) as s:
            s.run(pipeline_names=[pipeline])


def make_workspace(tmp: Path, trained_run: dict) -> Workspace:
    """Copy the project, preprocess and split it once; copy the trained run."""
    root = copy_project(tmp / "project")
    run_dir = tmp / "run"
    shutil.copytree(trained_run["run_dir"], run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    adata = trained_run["adata"]
    keep = (adata.obs["celltype"] == "C") & adata.obs["pert"].isin(["ctrl", "p3"])
    infer_input = tmp / "cells.h5ad"
    adata[keep.to_numpy()].copy().write_h5ad(infer_input)
    ws = Workspace(root, run_dir, infer_input, infer_args(run_dir, infer_input))
    with contextlib.chdir(root):
        ws.run("preprocessing")
        ws.run("splits")
    return ws


def snapshot(*folders: Path) -> dict[str, tuple[int, int, str]]:
    """Size, mtime and sha256 of every file under ``folders`` (what a case may not change)."""
    files: dict[str, tuple[int, int, str]] = {}
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            stat = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            files[str(path)] = (stat.st_size, stat.st_mtime_ns, digest)
    return files


def message_of(action: Callable[[], object]) -> str:
    """The message of the error ``action`` raises: an InputError, Kedro's, or the CLI's exit 2."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = action()
    except InputError as exc:
        return str(exc)
    except Exception as exc:  # Kedro wraps errors (DatasetError, ParameterValidationError)
        from perturbflow.error_report import user_error

        found = user_error(exc)
        assert found is not None, f"not reported as a user error: {exc!r}"
        return str(found[1])
    assert code == 2, f"expected exit code 2 (bad input), got {code}: {err.getvalue()}"
    return err.getvalue()


def cli(args: list[str]) -> Callable[[], int]:
    """``perturbflow ARGS`` as an action for :func:`message_of`."""
    return lambda: run_cli(args)


@contextlib.contextmanager
def replaced(path: Path, write: Callable[[Path], None]) -> Iterator[Path]:
    """``path`` rewritten by ``write`` for the ``with`` block, then restored."""
    keep = path.with_name(path.name + ".orig")
    shutil.copy2(path, keep)
    try:
        write(path)
        yield path
    finally:
        shutil.move(keep, path)


def rewritten_h5ad(change: Callable[[ad.AnnData], None]) -> Callable[[Path], None]:
    """A ``write`` for :func:`replaced`: the file read, changed by ``change`` and written back."""

    def write(path: Path) -> None:
        adata = ad.read_h5ad(path)
        change(adata)
        adata.write_h5ad(path)

    return write
