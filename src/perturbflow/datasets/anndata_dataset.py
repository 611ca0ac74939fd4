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

Example catalog entry::

    preprocessed_adata:
      type: perturbflow.datasets.AnnDataDataset
      filepath: data/02_intermediate/preprocessed.h5ad
      backed: false            # true: open lazily (X stays on disk)
      save_args:
        compression: gzip
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path, PurePosixPath
from typing import Any

import anndata as ad
import fsspec
import h5py
import numpy as np
import pandas as pd
from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)
from kedro_datasets._typing import TablePreview

from perturbflow.io_utils import atomic_path

__all__ = ["AnnDataDataset", "describe_h5ad"]

#: Human-readable names of the ``encoding-type`` attribute of ``/X``.
_X_FORMATS = {"array": "dense", "csr_matrix": "csr", "csc_matrix": "csc"}


# ---- reading metadata with h5py (never touches X) ----------------------------------------


def _attr_str(value: Any) -> str:
    """Decode an HDF5 string attribute (``bytes`` or ``str``) to ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _attr_list(value: Any) -> list[str]:
    """Decode an HDF5 string-array attribute (possibly an empty float array) to a list."""
    if value is None:
        return []
    return [_attr_str(v) for v in np.atleast_1d(value)]


def _encoding(node: h5py.Group | h5py.Dataset) -> str | None:
    enc = node.attrs.get("encoding-type")
    return None if enc is None else _attr_str(enc)


def _dataframe_group(f: h5py.Group, key: str, where: str) -> h5py.Group:
    """Return the ``obs``/``var`` group of an h5ad file, or raise a clear error."""
    node = f.get(key)
    if not isinstance(node, h5py.Group) or _encoding(node) != "dataframe":
        raise ValueError(
            f"'{where}' is not a valid h5ad file: expected a '{key}' dataframe group "
            f"(anndata >= 0.7 layout), found {'nothing' if node is None else node!r}."
        )
    return node


def _dataframe_len(group: h5py.Group) -> int:
    index_key = _attr_str(group.attrs["_index"])
    return int(group[index_key].shape[0])


def _x_summary(f: h5py.Group) -> tuple[str | None, str | None]:
    """Return the ``encoding-type`` and dtype of ``/X`` without reading its values."""
    node = f.get("X")
    if node is None:
        return None, None
    enc = _encoding(node)
    if isinstance(node, h5py.Dataset):
        return enc or "array", str(node.dtype)
    if enc is None and "h5sparse_format" in node.attrs:  # files written by anndata < 0.7
        enc = f"{_attr_str(node.attrs['h5sparse_format'])}_matrix"
    dtype = str(node["data"].dtype) if "data" in node else None
    return enc, dtype


def _summarize(f: h5py.Group, where: str) -> dict[str, Any]:
    obs = _dataframe_group(f, "obs", where)
    var = _dataframe_group(f, "var", where)
    x_encoding, x_dtype = _x_summary(f)

    def keys(name: str) -> list[str]:
        node = f.get(name)
        return sorted(node.keys()) if isinstance(node, h5py.Group) else []

    return {
        "n_obs": _dataframe_len(obs),
        "n_vars": _dataframe_len(var),
        "X_encoding": x_encoding,
        "X_format": _X_FORMATS.get(x_encoding, x_encoding) if x_encoding else None,
        "X_dtype": x_dtype,
        "obs_columns": _attr_list(obs.attrs.get("column-order")),
        "var_columns": _attr_list(var.attrs.get("column-order")),
        "obsm_keys": keys("obsm"),
        "layers_keys": keys("layers"),
        "has_raw": "raw" in f,
    }


def _read_column_head(node: h5py.Group | h5py.Dataset, nrows: int) -> Any:
    """Read the first ``nrows`` values of one dataframe column (or index) of an h5ad file."""
    enc = _encoding(node)
    if isinstance(node, h5py.Dataset) and enc == "string-array":
        return node.asstr()[:nrows]
    if isinstance(node, h5py.Dataset) and enc == "array":
        return node[:nrows]
    if isinstance(node, h5py.Group) and enc == "categorical":
        categories = ad.io.read_elem(node["categories"])
        return pd.Categorical.from_codes(
            node["codes"][:nrows], categories, ordered=bool(node.attrs.get("ordered", False))
        )
    # Nullable integer/boolean/string columns and anything newer: read the column, then cut.
    return ad.io.read_elem(node)[:nrows]


def _read_obs_head(f: h5py.Group, nrows: int, where: str) -> pd.DataFrame:
    """Read the first ``nrows`` rows of ``obs`` without reading the rest of the file."""
    obs = _dataframe_group(f, "obs", where)
    if _attr_str(obs.attrs.get("encoding-version", "")) != "0.2.0":
        # Older dataframe layouts keep categories elsewhere: let anndata decode the lot.
        return ad.io.read_elem(obs).iloc[:nrows]
    index_key = _attr_str(obs.attrs["_index"])
    columns = _attr_list(obs.attrs.get("column-order"))
    index = pd.Index(_read_column_head(obs[index_key], nrows), name=None)
    data = {col: _read_column_head(obs[col], nrows) for col in columns}
    return pd.DataFrame(data, index=index, columns=columns)


def _check_hdf5(path: str | os.PathLike[str]) -> None:
    if not Path(path).exists():
        raise FileNotFoundError(f"No h5ad file at '{path}'.")
    if not h5py.is_hdf5(path):
        raise ValueError(f"'{path}' is not a valid h5ad file: it is not an HDF5 file.")


def describe_h5ad(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summarize a local ``.h5ad`` file from its metadata, without reading ``X``.

    Only HDF5 attributes, the ``obs``/``var`` index lengths and group keys are read, so this is
    cheap even for files far larger than memory.

    Args:
        path: Path of the ``.h5ad`` file.

    Returns:
        A dict with ``n_obs``, ``n_vars``, ``X_encoding`` (the ``encoding-type`` attribute of
        ``/X``: ``"array"``, ``"csr_matrix"`` or ``"csc_matrix"``; ``None`` without ``X``),
        ``X_format`` (``"dense"``, ``"csr"`` or ``"csc"``), ``X_dtype``, ``obs_columns``,
        ``var_columns``, ``obsm_keys``, ``layers_keys`` and ``has_raw``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If ``path`` is not an HDF5 file or lacks the h5ad ``obs``/``var`` groups.
    """
    _check_hdf5(path)
    with h5py.File(path, "r") as f:
        return _summarize(f, str(path))


# ---- saving without touching the caller's object ------------------------------------------


def _write_view(adata: ad.AnnData) -> ad.AnnData:
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


# ---- the dataset ----------------------------------------------------------------------------


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

    def _save_written(self, data: Any) -> None:
        """Move a file written out of core onto the dataset's path (atomically, locally)."""
        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        try:
            if self._is_local:
                with atomic_path(Path(save_path)) as tmp:
                    shutil.move(str(data.path), tmp)  # a copy when /tmp is another disk
            else:
                parent = str(PurePosixPath(save_path).parent)
                if parent and parent != ".":
                    self._fs.makedirs(parent, exist_ok=True)
                self._fs.put_file(str(data.path), save_path)
        finally:
            data.discard()

    def save(self, data: ad.AnnData) -> None:
        """Write ``data`` to the ``.h5ad`` file atomically, leaving ``data`` untouched.

        The file is written to a temporary file in the target's directory and moved onto the
        target only once complete; on failure the previous file (if any) is left as it was.
        A :class:`~perturbflow.preprocess.stream.WrittenH5ad` (a file the out-of-core
        preprocessing already wrote) is moved onto the target the same way.

        Args:
            data: The AnnData to save (may be backed or a view), or a written file.

        Raises:
            DatasetError: If ``data`` is not an AnnData or writing fails.
        """
        from perturbflow.preprocess.stream import WrittenH5ad  # local: scanpy is heavy

        if isinstance(data, WrittenH5ad):  # written out of core: move the file into place
            self._save_written(data)
            return
        if not isinstance(data, ad.AnnData):
            raise DatasetError(
                f"AnnDataDataset can only save an anndata.AnnData, got {type(data).__name__} "
                f"(dataset {self})."
            )
        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        to_write = _write_view(data)

        if self._is_local:
            target = Path(save_path)
            with atomic_path(target) as tmp:
                to_write.write_h5ad(tmp, **self._save_args)
        else:
            with tempfile.TemporaryDirectory(prefix="anndata_dataset_") as tmp_dir:
                tmp = Path(tmp_dir) / PurePosixPath(save_path).name
                to_write.write_h5ad(tmp, **self._save_args)
                parent = str(PurePosixPath(save_path).parent)
                if parent and parent != ".":
                    self._fs.makedirs(parent, exist_ok=True)
                self._fs.put_file(str(tmp), save_path)

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
                _check_hdf5(load_path)
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
                return _summarize(f, where)
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
                summary = _summarize(f, where)
                head = _read_obs_head(f, nrows, where)
            except ValueError as exc:
                raise DatasetError(str(exc)) from exc

        columns = ["obs_name", *(str(c) for c in head.columns)]
        rows = [
            [_json_value(v) for v in (name, *values)]
            for name, values in zip(head.index, head.itertuples(index=False), strict=True)
        ]
        return TablePreview(
            {
                "index": list(range(len(rows))),
                "columns": columns,
                "data": rows,
                "summary": summary,
            }
        )


def _json_value(value: Any) -> Any:
    """Convert one table cell to a plain JSON value (numpy scalars unboxed, NA -> None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)
