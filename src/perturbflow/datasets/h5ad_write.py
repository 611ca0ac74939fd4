"""Writing an AnnData to an ``.h5ad`` path atomically, without modifying the object.

The target is never written in place: the file is written to a temporary file beside it
and moved onto it with :func:`os.replace` (:func:`perturbflow.io_utils.atomic_path`), or, on
a remote ``fsspec`` filesystem, written locally and uploaded. ``AnnData.write_h5ad`` converts
string columns of ``obs``/``var`` to categoricals in place and re-points a backed object at
the new file, so what is written is :func:`write_view`, a stand-in sharing the object's
arrays. These are the save path of :class:`~perturbflow.datasets.AnnDataDataset`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import anndata as ad
from fsspec import AbstractFileSystem

from perturbflow.io_utils import WrittenH5ad, atomic_path

__all__ = ["move_written", "write_h5ad_to", "write_view"]


def write_view(adata: ad.AnnData) -> ad.AnnData:
    """Return an in-memory AnnData to hand to ``write_h5ad`` in place of ``adata``.

    It shares the arrays of ``adata`` (``X`` may stay an on-disk dataset of a backed object, and
    is streamed by anndata on write) but owns copies of ``obs``, ``var`` and ``raw.var``, which
    ``write_h5ad`` converts to categoricals in place. Writing it cannot close, re-point or
    otherwise modify ``adata``.
    """
    try:
        raw = None
        if adata.raw is not None:
            raw = {"X": adata.raw.X, "var": adata.raw.var.copy(), "varm": dict(adata.raw.varm)}
        return ad.AnnData(
            X=adata.X,
            obs=adata.obs.copy(),
            var=adata.var.copy(),
            uns=dict(adata.uns),
            obsm=dict(adata.obsm),
            varm=dict(adata.varm),
            obsp=dict(adata.obsp),
            varp=dict(adata.varp),
            layers=dict(adata.layers),
            raw=raw,
        )
    except Exception:  # fall back to a full (slower) copy on any oddity
        return adata.to_memory(copy=True) if adata.isbacked else adata.copy()


def _put_file(fs: AbstractFileSystem, local: str | Path, save_path: str) -> None:
    """Upload ``local`` to ``save_path`` on ``fs``, creating its parent folder."""
    parent = str(PurePosixPath(save_path).parent)
    if parent and parent != ".":
        fs.makedirs(parent, exist_ok=True)
    fs.put_file(str(local), save_path)


def write_h5ad_to(
    adata: ad.AnnData,
    save_path: str,
    *,
    fs: AbstractFileSystem,
    is_local: bool,
    save_args: dict[str, Any],
) -> None:
    """Write :func:`write_view` of ``adata`` to ``save_path`` (atomically when local).

    Args:
        adata: The AnnData to write (may be backed or a view); left untouched.
        save_path: The target path on ``fs``.
        fs: The target's filesystem.
        is_local: Whether ``fs`` is the local filesystem.
        save_args: Keyword arguments for ``AnnData.write_h5ad``.
    """
    to_write = write_view(adata)
    if is_local:
        with atomic_path(Path(save_path)) as tmp:
            to_write.write_h5ad(tmp, **save_args)
        return
    with tempfile.TemporaryDirectory(prefix="anndata_dataset_") as tmp_dir:
        tmp = Path(tmp_dir) / PurePosixPath(save_path).name
        to_write.write_h5ad(tmp, **save_args)
        _put_file(fs, tmp, save_path)


def move_written(
    written: WrittenH5ad, save_path: str, *, fs: AbstractFileSystem, is_local: bool
) -> None:
    """Move a file written out of core onto ``save_path`` (atomically when local).

    The written file's temporary folder is removed whether the move succeeds or not.

    Args:
        written: The file, waiting in its temporary folder.
        save_path: The target path on ``fs``.
        fs: The target's filesystem.
        is_local: Whether ``fs`` is the local filesystem.
    """
    try:
        if is_local:
            with atomic_path(Path(save_path)) as tmp:
                shutil.move(str(written.path), tmp)  # a copy when /tmp is another disk
        else:
            _put_file(fs, written.path, save_path)
    finally:
        written.discard()
