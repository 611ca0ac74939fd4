"""Small I/O helpers shared by the library and the Kedro datasets."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    Readers never see a half-written file: the data are written to a temporary file in
    the same directory (so the rename is atomic on POSIX) and moved into place only when
    the ``with`` block exits without an exception. On failure the temporary file is
    removed and ``target`` is left as it was. The file gets the permissions of the file it
    replaces, or the usual ``0666 & ~umask`` (``mkstemp`` alone would leave it ``0600``).

    Args:
        target: The final path of the file.

    Yields:
        The temporary path to write to.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        tmp.chmod(mode)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass(frozen=True)
class WrittenH5ad:
    """An h5ad file written out of core, waiting in a temporary folder.

    The out-of-core preprocessing (:mod:`perturbflow.preprocess.stream`) returns one;
    saving it through :class:`~perturbflow.datasets.AnnDataDataset` moves the file to the
    dataset's path (and removes the folder); :meth:`discard` removes it otherwise.
    """

    path: Path

    def discard(self) -> None:
        """Delete the temporary file and its folder."""
        shutil.rmtree(self.path.parent, ignore_errors=True)


def _umask() -> int:
    """Return the process umask without changing it (read from /proc on Linux)."""
    try:
        status = Path("/proc/self/status").read_text()
        match = re.search(r"^Umask:\s*([0-7]+)", status, flags=re.MULTILINE)
        if match:
            return int(match.group(1), 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the set-and-restore idiom
    os.umask(mask)
    return mask


def load_tensors(path: str | os.PathLike[str], *, what: str, fix: str) -> Any:
    """Read a file of tensors with ``torch.load(weights_only=True)``, naming it on failure.

    Torch's own errors name no file, and for a file holding pickled objects they advise
    ``weights_only=False``, which would run the file's code: the one thing never to do
    with a file from elsewhere. Here every failure becomes one message that names the
    file, what it should have been and how to recover.

    Args:
        path: The file (a state dict, checkpoint or feature tensor file).
        what: What the file should hold, for the message (e.g. ``"model weights"``).
        fix: How to recover, for the message (e.g. ``"rerun the training"``).

    Returns:
        The loaded object (tensors, dicts, lists and plain values only).

    Raises:
        InputError: The file is missing, truncated, not a torch file, or holds pickled
            Python objects (which are refused, never run).
    """
    import pickle

    import torch

    from perturbflow.exceptions import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file (expected {what}); {fix}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):  # a pickle of Python objects, not bytes noise
            reason = (
                "it holds pickled Python objects besides tensors; perturbflow never loads "
                "those (loading them could run code), so do not pass weights_only=False"
            )
        else:
            reason = f"it is truncated or corrupt (not a complete PyTorch file: {_first_line(err)})"
    except Exception as err:  # noqa: BLE001 - torch raises a dozen types on malformed bytes
        reason = f"it is truncated or corrupt ({type(err).__name__}: {_first_line(err)})"
    raise InputError(f"{path}: cannot be read as {what}: {reason}. {fix[:1].upper()}{fix[1:]}.")


def _first_line(err: BaseException) -> str:
    """The first sentence of an exception's message (torch's run to dozens of lines)."""
    lines = str(err).strip().splitlines()
    first = lines[0] if lines else type(err).__name__
    return first.split(". ")[0].rstrip(".")
