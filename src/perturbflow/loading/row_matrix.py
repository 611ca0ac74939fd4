"""A cells x genes matrix that is read by rows and never densified whole.

Every predictor, baseline and score reads the expression of a few rows at a time (a
context's controls, one perturbation's cells). :class:`RowMatrix` gives them that with one
interface whether the matrix is a sparse matrix in RAM or a matrix of an h5ad file on disk
(through :class:`~perturbflow.loading.h5reader.H5RowReader`, which preloads it when it fits
the memory budget and keeps a CSR matrix CSR): ``X[rows]`` returns those rows as a dense
float32 array, and :meth:`RowMatrix.blocks` streams a long list of rows in bounded blocks.
A dense in-memory array needs no wrapper: the callers index it the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from perturbflow.loading.h5reader import H5RowReader

#: Bytes of float32 values per block when a long list of rows is streamed (the float64
#: sums of :func:`~perturbflow.splits.effects.group_means` take twice that).
BLOCK_BYTES = 1 << 28


def block_rows_for(n_cols: int) -> int:
    """Rows per block: :data:`BLOCK_BYTES` of float32 values, at least 1,024 rows."""
    return max(1024, BLOCK_BYTES // (4 * max(n_cols, 1)))


class RowMatrix:
    """Rows of a sparse in-memory matrix or of an h5ad matrix on disk, as dense float32.

    Args:
        source: A scipy sparse matrix (converted to CSR once if it is not) or an open
            :class:`H5RowReader`.
    """

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, source: sp.spmatrix | sp.sparray | H5RowReader) -> None:
        if isinstance(source, H5RowReader):
            self.reader: H5RowReader | None = source
            self._csr = None
            self.shape = (source.n_rows, source.n_cols)
        elif sp.issparse(source):
            self.reader = None
            self._csr = source if source.format == "csr" else sp.csr_matrix(source)
            self.shape = tuple(int(s) for s in source.shape)
        else:
            raise TypeError(f"RowMatrix reads sparse matrices or H5RowReaders, not {type(source)}")

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        where = f"{self.reader.path.name}[{self.reader.key}]" if self.reader else "CSR in RAM"
        return f"RowMatrix({self.shape[0]} x {self.shape[1]}, {where})"

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(
            f"{self!r} is read by rows (X[rows], X.blocks(rows)); densifying it whole could "
            "exceed RAM on a large screen."
        )

    def _rows(self, index: Any) -> np.ndarray:
        if isinstance(index, slice):
            return np.arange(*index.indices(self.shape[0]), dtype=np.int64)
        rows = np.asarray(index)
        if rows.dtype == bool:
            if rows.shape != (self.shape[0],):
                raise IndexError(f"a row mask of {rows.shape} for {self.shape[0]} rows")
            return np.flatnonzero(rows)
        return rows.astype(np.int64, copy=False).ravel()

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, tuple):
            rows, cols = index
            return self[rows][:, cols]
        if isinstance(index, int | np.integer):
            return self[np.array([index])][0]
        rows = self._rows(index)
        if self.reader is not None:
            return self.reader.read(rows)
        return self._csr[rows].toarray().astype(np.float32, copy=False)

    def blocks(
        self, rows: Sequence[int] | np.ndarray | None = None, block_rows: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(rows of the block, their dense values)`` over ``rows`` (all by default)."""
        yield from row_blocks(self, rows, block_rows)


def row_blocks(
    X: np.ndarray | RowMatrix,
    rows: Sequence[int] | np.ndarray | None = None,
    block_rows: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(block rows, X[block rows])`` over ``rows`` of a dense array or a RowMatrix.

    ``block_rows`` defaults to :func:`block_rows_for` the matrix's width.
    """
    rows = np.arange(len(X)) if rows is None else np.asarray(rows, dtype=np.int64)
    block_rows = block_rows or block_rows_for(X.shape[1])
    reader = X.reader if isinstance(X, RowMatrix) else None
    for start in range(0, len(rows), block_rows):
        block = rows[start : start + block_rows]
        values = np.asarray(X[block])
        if reader is not None:  # a pass over the file must not leave it all resident
            reader.release()
        yield block, values


def matrix_sha256(X: np.ndarray | RowMatrix, names: Sequence[str] = ()) -> str:
    """SHA-256 of a matrix's float32 rows (then of ``names``), computed block by block.

    The digest equals ``sha256(float32 C-order bytes of the whole matrix)``, so it does not
    depend on how the matrix is stored or on the block size, and runs hashed before this
    was computed in blocks keep their digest.
    """
    digest = hashlib.sha256()
    for _, block in row_blocks(X):
        digest.update(np.ascontiguousarray(block, dtype=np.float32).tobytes())
    if names:
        digest.update("\n".join(names).encode())
    return digest.hexdigest()
