"""Read an h5ad matrix by row ranges and write one block of rows at a time.

The out-of-core preprocessing (:mod:`perturbflow.preprocess.stream`) streams a screen larger
than RAM through a few passes of contiguous row ranges. anndata 0.12 reads a backed CSR
matrix by rows, but writes a matrix only whole (``write_elem``) or through its experimental
on-disk concatenation; the writers here append CSR (or dense) row blocks to resizable HDF5
datasets with anndata's own encoding attributes, so the file reads back with
``anndata.read_h5ad`` and :class:`~perturbflow.loading.h5reader.H5RowReader`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.exceptions import InputError

#: Elements per HDF5 chunk of the written CSR arrays (1 MiB of float32).
CHUNK_ELEMENTS = 262_144


def _attr(node: h5py.Group | h5py.Dataset, name: str) -> str:
    value = node.attrs.get(name, "")
    return value.decode() if isinstance(value, bytes) else str(value)


def matrix_shape(node: h5py.Group | h5py.Dataset, where: str) -> tuple[int, int]:
    """Shape of a dense or CSR matrix node; CSC and other encodings are refused by name."""
    if isinstance(node, h5py.Dataset):
        return int(node.shape[0]), int(node.shape[1])
    encoding = _attr(node, "encoding-type") or f"{_attr(node, 'h5sparse_format')}_matrix"
    if encoding != "csr_matrix":
        raise InputError(
            f"{where} is stored as {encoding!r}; the out-of-core preprocessing reads CSR or "
            "dense matrices by rows. Rewrite it as CSR (adata.X = scipy.sparse.csr_matrix(adata.X)"
            "; adata.write_h5ad(path)) or set preprocessing.out_of_core: false."
        )
    shape = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
    return int(shape[0]), int(shape[1])


def value_dtype(node: h5py.Group | h5py.Dataset) -> np.dtype:
    """The float dtype rows are read as: the stored one if it is a float, else float32."""
    dtype = node.dtype if isinstance(node, h5py.Dataset) else node["data"].dtype
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float32)


def read_rows(node: h5py.Group | h5py.Dataset, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``start:stop`` of a dense or CSR matrix node, as CSR (:func:`value_dtype`)."""
    dtype = value_dtype(node)
    if isinstance(node, h5py.Dataset):
        return sp.csr_matrix(np.asarray(node[start:stop], dtype=dtype))
    indptr = node["indptr"][start : stop + 1].astype(np.int64)
    lo, hi = int(indptr[0]), int(indptr[-1])
    data = node["data"][lo:hi].astype(dtype, copy=False)
    indices = node["indices"][lo:hi]
    n_cols = matrix_shape(node, "matrix")[1]
    return sp.csr_matrix((data, indices, indptr - lo), shape=(stop - start, n_cols))


def row_ranges(n_rows: int, block_rows: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive blocks of at most ``block_rows`` rows."""
    for start in range(0, n_rows, block_rows):
        yield start, min(start + block_rows, n_rows)


class CSRAppender:
    """Writes a CSR matrix into ``parent[name]`` one block of rows at a time.

    Args:
        parent: The HDF5 group to create the matrix in (the file, ``obsm``, ``layers``).
        name: The matrix's name in ``parent``.
        n_cols: Number of columns.
        dtype: dtype of the values.
    """

    def __init__(
        self, parent: h5py.Group, name: str, n_cols: int, dtype: np.dtype = np.float32
    ) -> None:
        self.group = parent.create_group(name)
        self.n_cols = n_cols
        self.dtype = np.dtype(dtype)
        self.nnz = 0
        self._indptr: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        self.n_rows = 0
        self._data = self.group.create_dataset(
            "data", (0,), self.dtype, maxshape=(None,), chunks=(CHUNK_ELEMENTS,)
        )
        index_type = np.int32 if n_cols < 2**31 else np.int64
        self._indices = self.group.create_dataset(
            "indices", (0,), index_type, maxshape=(None,), chunks=(CHUNK_ELEMENTS,)
        )

    def append(self, block: sp.spmatrix) -> None:
        """Append the rows of ``block`` (converted to CSR of ``dtype``, sorted indices)."""
        block = sp.csr_matrix(block, dtype=self.dtype)
        block.sort_indices()
        n = int(block.nnz)
        for dataset, values in ((self._data, block.data), (self._indices, block.indices)):
            dataset.resize((self.nnz + n,))
            dataset[self.nnz :] = values
        self._indptr.append(self.nnz + block.indptr[1:].astype(np.int64))
        self.nnz += n
        self.n_rows += block.shape[0]

    def close(self) -> None:
        """Write ``indptr`` and anndata's encoding attributes."""
        self.group.create_dataset("indptr", data=np.concatenate(self._indptr))
        self.group.attrs.update(
            {
                "encoding-type": "csr_matrix",
                "encoding-version": "0.1.0",
                "shape": (self.n_rows, self.n_cols),
            }
        )


class DenseAppender:
    """Writes a dense float32 matrix of known shape into ``parent[name]`` block by block."""

    def __init__(self, parent: h5py.Group, name: str, n_rows: int, n_cols: int) -> None:
        self.dataset = parent.create_dataset(name, (n_rows, n_cols), np.float32)
        self.dataset.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        self.n_rows = 0

    def append(self, block: sp.spmatrix | np.ndarray) -> None:
        """Write the next rows."""
        values = block.toarray() if sp.issparse(block) else np.asarray(block)
        self.dataset[self.n_rows : self.n_rows + values.shape[0]] = values
        self.n_rows += values.shape[0]

    def close(self) -> None:
        """Check that every row was written."""
        if self.n_rows != self.dataset.shape[0]:
            raise RuntimeError(f"{self.n_rows} of {self.dataset.shape[0]} rows written")


def merged_uns(source_file: h5py.File, records: dict[str, Any], kind: str) -> dict[str, Any]:
    """The input's ``uns`` with what preprocessing did (``uns['perturbflow']``, ``log1p``)."""
    uns = dict(ad.io.read_elem(source_file["uns"])) if "uns" in source_file else {}
    if kind == "counts":
        uns["log1p"] = {"base": None}
    uns["perturbflow"] = {**dict(uns.get("perturbflow", {})), **records}
    return uns


def kept_obs(obs: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """The kept cells' ``obs``, unused categories dropped (as anndata's subsetting does)."""
    kept = obs.iloc[np.flatnonzero(keep)].copy()
    for col in kept.columns:
        if isinstance(kept[col].dtype, pd.CategoricalDtype):
            kept[col] = kept[col].cat.remove_unused_categories()
    return kept


def write_frames(out: h5py.File, obs: pd.DataFrame, var: pd.DataFrame, uns: dict) -> None:
    """``obs``, ``var``, ``uns`` and the empty groups, as ``write_h5ad`` stores them."""
    frames = ad.AnnData(obs=obs.copy(), var=var)
    frames.strings_to_categoricals()  # string columns as categoricals
    ad.io.write_elem(out, "obs", frames.obs)
    ad.io.write_elem(out, "var", frames.var)
    ad.io.write_elem(out, "uns", uns)
    for group in ("obsm", "layers", "varm", "obsp", "varp"):
        out.require_group(group).attrs.update(
            {"encoding-type": "dict", "encoding-version": "0.1.0"}
        )
    out.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
