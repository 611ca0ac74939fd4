"""An h5ad file's metadata, read with h5py without touching ``X``.

:func:`describe_h5ad` summarizes a file (shape, ``X`` encoding and dtype, obs/var columns,
obsm and layer keys) from HDF5 attributes and group keys only; :func:`read_obs_head` reads
the first rows of ``obs`` column by column. Both stay cheap for files far larger than memory;
:class:`~perturbflow.datasets.AnnDataDataset` builds its ``describe`` and ``preview`` on them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd

__all__ = ["check_hdf5", "describe_h5ad", "obs_preview", "read_obs_head", "summarize"]

#: Human-readable names of the ``encoding-type`` attribute of ``/X``.
_X_FORMATS = {"array": "dense", "csr_matrix": "csr", "csc_matrix": "csc"}


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


def summarize(f: h5py.Group, where: str) -> dict[str, Any]:
    """The :func:`describe_h5ad` dict of an open h5ad file (``where`` names it in errors).

    Raises:
        ValueError: The file lacks the h5ad ``obs``/``var`` dataframe groups.
    """
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


def read_obs_head(f: h5py.Group, nrows: int, where: str) -> pd.DataFrame:
    """Read the first ``nrows`` rows of ``obs`` without reading the rest of the file.

    Raises:
        ValueError: The file lacks the h5ad ``obs`` dataframe group.
    """
    obs = _dataframe_group(f, "obs", where)
    if _attr_str(obs.attrs.get("encoding-version", "")) != "0.2.0":
        # Older dataframe layouts keep categories elsewhere: let anndata decode the lot.
        return ad.io.read_elem(obs).iloc[:nrows]
    index_key = _attr_str(obs.attrs["_index"])
    columns = _attr_list(obs.attrs.get("column-order"))
    index = pd.Index(_read_column_head(obs[index_key], nrows), name=None)
    data = {col: _read_column_head(obs[col], nrows) for col in columns}
    return pd.DataFrame(data, index=index, columns=columns)


def check_hdf5(path: str | os.PathLike[str]) -> None:
    """Fail unless ``path`` is an existing HDF5 file.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If it is not an HDF5 file.
    """
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
    check_hdf5(path)
    with h5py.File(path, "r") as f:
        return summarize(f, str(path))


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


def obs_preview(f: h5py.Group, nrows: int, where: str) -> dict[str, Any]:
    """The first ``nrows`` rows of ``obs`` and the file's summary, as plain JSON values.

    Args:
        f: The open h5ad file.
        nrows: Number of ``obs`` rows to include.
        where: The file's name in error messages.

    Returns:
        A ``DataFrame.to_dict(orient="split")``-style dict (``index``, ``columns``,
        ``data``) whose first column ``obs_name`` holds the obs names, plus ``summary``: the
        :func:`describe_h5ad` dict. Missing values are ``None``.

    Raises:
        ValueError: The file lacks the h5ad ``obs``/``var`` dataframe groups.
    """
    summary = summarize(f, where)
    head = read_obs_head(f, nrows, where)
    columns = ["obs_name", *(str(c) for c in head.columns)]
    rows = [
        [_json_value(v) for v in (name, *values)]
        for name, values in zip(head.index, head.itertuples(index=False), strict=True)
    ]
    return {"index": list(range(len(rows))), "columns": columns, "data": rows, "summary": summary}
