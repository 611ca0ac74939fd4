"""Kedro dataset for AnnData ``.h5ad`` files.

kedro-datasets (9.6) ships no AnnData dataset, so this one is written by hand, following the
conventions of the kedro-datasets file datasets (``pandas.ParquetDataset``,
``pandas.CSVDataset``): an ``fsspec`` filesystem, ``load_args``/``save_args``, ``credentials``,
``fs_args``, ``metadata`` and Kedro versioning.

Two choices differ from a plain ``anndata.write_h5ad`` call:

* **Atomic saves.** The target is never written in place: the file is written to a temporary
  file beside it and then moved onto it with :func:`os.replace` (see
  :func:`perturbflow.io_utils.atomic_path`). A crash mid-write leaves the previous file intact,
  and readers that hold the old file open (``backed`` mode) keep reading the old data.
* **The saved object is never modified.** ``AnnData.write_h5ad`` converts string columns of
  ``obs``/``var`` to categoricals *in place*, and writing a backed object re-points it at the
  new file. The dataset therefore writes a shallow stand-in that shares the (possibly on-disk)
  arrays of the object but owns copies of ``obs``/``var``.

The save path is :mod:`perturbflow.datasets.h5ad_write`; ``describe`` and ``preview`` read
metadata only, with :mod:`perturbflow.loading.h5ad_metadata` (whose :func:`describe_h5ad`
this module re-exports for :mod:`perturbflow.datasets`).

Example catalog entry::

    preprocessed_adata:
      type: perturbflow.datasets.AnnDataDataset
      filepath: data/02_intermediate/preprocessed.h5ad
      backed: false            # true: open lazily (X stays on disk)
      save_args:
        compression: gzip
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import PurePosixPath
from typing import Any

import anndata as ad
import fsspec
import h5py
from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)
from kedro_datasets._typing import TablePreview

from perturbflow.datasets.h5ad_write import move_written, write_h5ad_to
from perturbflow.io_utils import WrittenH5ad
from perturbflow.loading.h5ad_metadata import check_hdf5, describe_h5ad, obs_preview, summarize

__all__ = ["AnnDataDataset", "describe_h5ad"]


class AnnDataDataset(AbstractVersionedDataset[ad.AnnData, ad.AnnData]):
    """Loads and saves an :class:`anndata.AnnData` from/to an ``.h5ad`` file.

    Saves are atomic (temporary file + :func:`os.replace`) and never modify the object passed
    in. ``backed=True`` opens the file lazily (``X`` stays on disk) for large files.

    Examples:
        Using the YAML API::

            raw_adata:
              type: perturbflow.datasets.AnnDataDataset
              filepath: data/01_raw/perturbench_devel.h5ad

            preprocessed_adata@cells:
              type: perturbflow.datasets.AnnDataDataset
              filepath: data/02_intermediate/preprocessed.h5ad
              backed: true

        Using the Python API::

            >>> dataset = AnnDataDataset(filepath=tmp_path / "cells.h5ad")
            >>> dataset.save(adata)
            >>> reloaded = dataset.load()
    """

    DEFAULT_LOAD_ARGS: dict[str, Any] = {}
    DEFAULT_SAVE_ARGS: dict[str, Any] = {}
    DEFAULT_FS_ARGS: dict[str, Any] = {}

    def __init__(
        self,
        *,
        filepath: str | os.PathLike[str],
        backed: bool = False,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Create a dataset pointing at one ``.h5ad`` file.

        Args:
            filepath: Path of the ``.h5ad`` file, in POSIX form, optionally prefixed with an
                ``fsspec`` protocol (``s3://``, ``memory://``, ...). Without a prefix the local
                filesystem is used. ``backed=True`` needs a local file.
            backed: Open the file lazily with ``anndata.read_h5ad(path, backed="r")``: ``X``
                stays on disk and is read on access. The file is opened read-only.
            load_args: Extra keyword arguments for ``anndata.read_h5ad`` (e.g. ``as_sparse``,
                ``chunk_size``). Use ``backed`` rather than ``load_args["backed"]``.
            save_args: Keyword arguments for ``AnnData.write_h5ad`` (e.g.
                ``compression: gzip``, ``compression_opts``, ``as_dense``,
                ``convert_strings_to_categoricals``).
            version: A ``kedro.io.core.Version``. If its ``load`` is None the latest version is
                loaded; if its ``save`` is None a save version is generated.
            credentials: Credentials for the underlying filesystem, passed to
                ``fsspec.filesystem``.
            fs_args: Extra arguments for the ``fsspec`` filesystem constructor.
            metadata: Arbitrary metadata, ignored by Kedro (read by plugins such as kedro-viz).

        Raises:
            DatasetError: If ``backed`` is not a bool, or ``load_args`` contains ``backed``.
        """
        if not isinstance(backed, bool):
            raise DatasetError(
                f"AnnDataDataset 'backed' must be true or false, got {backed!r} "
                f"(files are always opened read-only) for '{filepath}'."
            )
        if load_args and "backed" in load_args:
            raise DatasetError(
                f"Set 'backed: true' on the AnnDataDataset for '{filepath}' instead of "
                f"'load_args: {{backed: ...}}'."
            )
        _fs_args = deepcopy(fs_args) or {}
        _credentials = deepcopy(credentials) or {}

        protocol, path = get_protocol_and_path(filepath, version)
        if protocol == "file":
            _fs_args.setdefault("auto_mkdir", True)

        self._protocol = protocol
        self._storage_options = {**_credentials, **_fs_args}
        self._fs = fsspec.filesystem(self._protocol, **self._storage_options)
        self._backed = backed
        self.metadata = metadata

        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )

        self._load_args = {**self.DEFAULT_LOAD_ARGS, **(load_args or {})}
        self._save_args = {**self.DEFAULT_SAVE_ARGS, **(save_args or {})}

    @property
    def _is_local(self) -> bool:
        return self._protocol == "file"

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": self._filepath,
            "protocol": self._protocol,
            "backed": self._backed,
            "load_args": self._load_args,
            "save_args": self._save_args,
            "version": self._version,
        }

    # ---- load -----------------------------------------------------------------------------

    def _existing_load_path(self) -> str:
        """Resolve the (versioned) load path and fail clearly if there is no file there."""
        load_path = get_filepath_str(self._get_load_path(), self._protocol)
        if not self._fs.exists(load_path):
            raise DatasetError(f"No h5ad file at '{load_path}' (dataset {self}).")
        return load_path

    def load(self) -> ad.AnnData:
        """Read the ``.h5ad`` file with ``anndata.read_h5ad``.

        Returns:
            The AnnData object; backed (``adata.isbacked``) if the dataset has ``backed=True``.

        Raises:
            DatasetError: If the file is missing, is not a valid h5ad file, or ``backed=True``
                is used with a non-local filesystem.
        """
        load_path = self._existing_load_path()
        if self._is_local:
            if not h5py.is_hdf5(load_path):
                raise DatasetError(
                    f"'{load_path}' is not a valid h5ad file: it is not an HDF5 file."
                )
            try:
                return ad.read_h5ad(
                    load_path, backed="r" if self._backed else None, **self._load_args
                )
            except Exception as exc:
                raise DatasetError(
                    f"Could not read '{load_path}' as an h5ad file: {type(exc).__name__}: {exc}"
                ) from exc

        if self._backed:
            raise DatasetError(
                f"backed=True needs a local file; '{self._protocol}://{load_path}' is not local."
            )
        try:
            with self._fs.open(load_path, "rb") as fobj:
                return ad.read_h5ad(fobj, **self._load_args)
        except Exception as exc:
            raise DatasetError(
                f"Could not read '{self._protocol}://{load_path}' as an h5ad file: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    # ---- save -----------------------------------------------------------------------------

    def _save_path(self) -> str:
        """The (versioned) path the next save writes to."""
        return get_filepath_str(self._get_save_path(), self._protocol)

    def save(self, data: ad.AnnData) -> None:
        """Write ``data`` to the ``.h5ad`` file atomically, leaving ``data`` untouched.

        The file is written to a temporary file in the target's directory and moved onto the
        target only once complete; on failure the previous file (if any) is left as it was.
        A :class:`~perturbflow.io_utils.WrittenH5ad` (a file the out-of-core
        preprocessing already wrote) is moved onto the target the same way.

        Args:
            data: The AnnData to save (may be backed or a view), or a written file.

        Raises:
            DatasetError: If ``data`` is not an AnnData or writing fails.
        """
        if isinstance(data, WrittenH5ad):  # written out of core: move the file into place
            move_written(data, self._save_path(), fs=self._fs, is_local=self._is_local)
            return
        if not isinstance(data, ad.AnnData):
            raise DatasetError(
                f"AnnDataDataset can only save an anndata.AnnData, got {type(data).__name__} "
                f"(dataset {self})."
            )
        write_h5ad_to(
            data, self._save_path(), fs=self._fs, is_local=self._is_local, save_args=self._save_args
        )
        self._invalidate_cache()

    # ---- bookkeeping ----------------------------------------------------------------------

    def _exists(self) -> bool:
        try:
            load_path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return bool(self._fs.exists(load_path))

    def _release(self) -> None:
        super()._release()
        self._invalidate_cache()

    def _invalidate_cache(self) -> None:
        """Invalidate the underlying filesystem caches."""
        filepath = get_filepath_str(self._filepath, self._protocol)
        self._fs.invalidate_cache(filepath)

    # ---- metadata-only access ---------------------------------------------------------------

    @contextmanager
    def _open_h5(self) -> Iterator[tuple[h5py.File, str]]:
        """Open the (versioned) file read-only with h5py; yield it and its display name."""
        load_path = self._existing_load_path()
        if self._is_local:
            try:
                check_hdf5(load_path)
            except ValueError as exc:
                raise DatasetError(str(exc)) from exc
            with h5py.File(load_path, "r") as f:
                yield f, load_path
            return
        where = f"{self._protocol}://{load_path}"
        with self._fs.open(load_path, "rb") as fobj:
            try:
                f = h5py.File(fobj, "r")
            except OSError as exc:
                raise DatasetError(
                    f"'{where}' is not a valid h5ad file: it is not an HDF5 file."
                ) from exc
            with f:
                yield f, where

    def describe(self) -> dict[str, Any]:
        """Summarize the file from its metadata, without reading ``X``.

        Returns:
            The dict of :func:`describe_h5ad` for the (versioned) load path.

        Raises:
            DatasetError: If the file is missing or is not a valid h5ad file.
        """
        with self._open_h5() as (f, where):
            try:
                return summarize(f, where)
            except ValueError as exc:
                raise DatasetError(str(exc)) from exc

    def preview(self, nrows: int = 5) -> TablePreview:
        """Preview the first rows of ``obs`` and the shape of the data, for kedro-viz.

        Only HDF5 metadata and the first ``nrows`` entries of each ``obs`` column are read;
        ``X`` is never loaded.

        Args:
            nrows: Number of ``obs`` rows to include. Defaults to 5.

        Returns:
            A ``DataFrame.to_dict(orient="split")``-style dict (``index``, ``columns``,
            ``data``) of the first ``obs`` rows with the obs names as the first column
            ``obs_name`` (kedro-viz shows ``columns`` and ``data`` only), plus ``summary``: the
            :func:`describe_h5ad` dict (``n_obs``, ``n_vars``, ``X_encoding``, ``X_format``,
            ``obsm_keys``, ...). Values are plain JSON types; missing values are ``None``.

        Raises:
            DatasetError: If the file is missing or is not a valid h5ad file.
        """
        if nrows < 0:
            raise DatasetError(f"preview nrows must be >= 0, got {nrows}.")
        with self._open_h5() as (f, where):
            try:
                return TablePreview(obs_preview(f, nrows, where))
            except ValueError as exc:
                raise DatasetError(str(exc)) from exc
