"""Lazy, fork-safe row reads from one matrix of an h5ad file (dense or CSR).

:class:`H5RowReader` returns dense ``(len(rows), n_cols)`` blocks of any rows, in the order
given, from ``X``, an ``obsm`` entry or a layer, either lazily from disk or from RAM when the
matrix fits a memory budget. anndata's backed mode is not used: it reads a CSR matrix row by
row, needs sorted unique indices and holds one handle that breaks across a fork.

Performance choices (measured on a 200k x 2000, 10 % dense CSR file; see
``tests/loading/test_h5reader.py`` for the behaviour):

* The file is opened once per process and kept open (opening costs ~1 ms per read).
* Requested rows are sorted and de-duplicated, grouped into contiguous runs, and ALL runs
  are read with ONE HDF5 call: a union of hyperslabs (``H5Sselect_hyperslab`` with
  ``SELECT_OR``) read into one buffer. h5py's high-level indexing cannot express a list of
  slices, and one ``dataset[a:b]`` per run costs ~40 us of Python/HDF5 overhead per run.
  HDF5 converts the file dtype to ``dtype`` during the read (no second copy).
* Runs are not coalesced across gaps: with the single union read, over-reading the gap
  rows was never faster (HDF5's sieve buffer already merges nearby small reads).
* CSR: ``indptr`` is read once at open; the runs' ``data``/``indices`` element ranges are
  read with the same union read, wrapped in a scipy CSR matrix of just those rows and only
  the requested rows are densified. The order and duplicates are restored by scipy's
  row indexing with the inverse of ``np.unique``.
* Preload (``preload=None``: when the matrix fits ``memory_budget_mib``) keeps a dense
  matrix dense and a CSR matrix CSR in RAM (never densified whole); reads are then numpy
  fancy indexing or scipy row indexing.

Thread and process safety: h5py serialises every HDF5 call behind one global lock, so
threads may share a reader (their lazy reads do not run in parallel). HDF5 file handles must
not cross a fork or a pickle: the handle is dropped on pickling and the reader reopens the
file when ``os.getpid()`` changed, so DataLoader workers (fork or spawn) each get their own
handle. A preloaded matrix travels with the pickle (shared copy-on-write after a fork).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import scipy.sparse as sp
from h5py import h5d, h5s

from perturbflow.exceptions import InputError, suggest

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024
_RUNS_PER_READ = 128  # more runs per HDF5 read was slower (HDF5 hyperslab-union cost)
_CSC_FIX = (
    "store it as CSR: `adata.X = scipy.sparse.csr_matrix(adata.X); adata.write_h5ad(path)` "
    "(same for a layer or obsm entry)"
)


class H5RowReader:
    """Reads rows of one matrix of an h5ad file as dense arrays.

    Args:
        path: The h5ad file.
        key: ``"X"``, an obsm key (``"X_hvg"`` reads ``/obsm/X_hvg``), or an explicit
            ``"obsm/<name>"`` or ``"layers/<name>"``.
        preload: ``True`` reads the matrix into RAM, ``False`` always reads lazily, ``None``
            preloads when it fits ``memory_budget_mib``.
        memory_budget_mib: Budget of the automatic preload, in MiB (dense: rows x cols x
            itemsize of ``dtype``; CSR: its data + indices + indptr bytes).
        dtype: The dtype of the returned rows.

    Attributes:
        path, key, n_rows, n_cols, encoding (``"dense"`` or ``"csr"``), preloaded.

    Raises:
        InputError: Missing file, not HDF5, missing key (lists the available ones) or an
            encoding other than dense / CSR (CSC: names the fix).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        key: str = "X",
        preload: bool | None = None,
        memory_budget_mib: float = 4096.0,
        dtype: Any = np.float32,
    ) -> None:
        self.path = Path(path).resolve()
        self.key = key
        self.dtype = np.dtype(dtype)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._mem: np.ndarray | sp.csr_matrix | None = None
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such h5ad file (key {key!r}).")
        node = self._resolve(self._handle())
        self._node = node.name
        self.encoding: Literal["dense", "csr"]
        if isinstance(node, h5py.Dataset):
            if node.ndim != 2 or not np.issubdtype(node.dtype, np.number):
                raise InputError(
                    f"{self.path}: {key!r} (/{node.name.lstrip('/')}) is a {node.ndim}-D "
                    f"{node.dtype} array; expected a 2-D numeric matrix."
                )
            self.encoding = "dense"
            self.n_rows, self.n_cols = (int(s) for s in node.shape)
            nbytes = self.n_rows * self.n_cols * self.dtype.itemsize
        else:
            self.encoding = "csr"
            shape = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
            self.n_rows, self.n_cols = (int(s) for s in shape)
            self._indptr = node["indptr"][()].astype(np.int64)
            nnz = int(self._indptr[-1])
            nbytes = nnz * (self.dtype.itemsize + node["indices"].dtype.itemsize)
            nbytes += self._indptr.nbytes
        fits = nbytes <= memory_budget_mib * _MIB
        self.preloaded = fits if preload is None else bool(preload)
        size = f"{nbytes / _MIB:.1f} MiB in RAM"
        why = (
            f"preload={preload} given ({size})"
            if preload is not None
            else f"{size} {'fits' if fits else 'exceeds'} the {memory_budget_mib:g} MiB budget"
        )
        names = [self._node] if self.encoding == "dense" else [f"{self._node}/data"]
        names += [] if self.encoding == "dense" else [f"{self._node}/indices"]
        self._plan_direct([] if self.preloaded else names)
        if self.preloaded:
            self._preload()
            how = "preloaded"
        elif len(self._plans) == len(names):
            how = "lazy, memory-mapped"
        else:
            how = (
                "lazy, HDF5 reads (chunked/compressed: each row costs a chunk read; prefer preload)"
            )
        logger.info(
            "%s[%s]: %s %d x %d, %s: %s.",
            self.path.name, key, self.encoding, self.n_rows, self.n_cols, how, why,
        )  # fmt: skip

    # -- file handle ---------------------------------------------------------------------

    def _handle(self) -> h5py.File:
        """The h5py file of this process, reopened after a fork or unpickling.

        HDF5 handles are not fork- or pickle-safe (the library's caches and file state belong
        to the process that opened it), so a handle is only ever used by the pid that opened
        it; opening once per process avoids reopening the file on every read.
        """
        pid = os.getpid()
        if self._file is None or self._pid != pid:
            if self._file is not None:
                logger.debug("%s: pid changed (%s -> %s), reopening.", self.path, self._pid, pid)
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as err:
                raise InputError(f"{self.path}: not a readable h5ad (HDF5) file: {err}") from err
            self._pid = pid
        return self._file

    def close(self) -> None:
        """Close the file handle and memory maps (a later :meth:`read` reopens them)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid = None, None
        self._maps, self._maps_pid = {}, None

    def __enter__(self) -> H5RowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Handles and maps are per process (a memmap would pickle as a full copy): the new
        # owner reopens them lazily. The chunk plans and a preloaded matrix travel.
        state["_file"], state["_pid"] = None, None
        state["_maps"], state["_maps_pid"] = {}, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- reading -------------------------------------------------------------------------

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Return the given rows as a dense ``(len(rows), n_cols)`` array of ``dtype``.

        Args:
            rows: 1-D integer row indices in any order; duplicates and ``len 0`` allowed.

        Returns:
            The rows in the order given.

        Raises:
            IndexError: A row outside ``[0, n_rows)``.
        """
        rows = np.asarray(rows)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise IndexError(f"{self.path}[{self.key}]: rows must be 1-D integers, got {rows!r}")
        rows = rows.astype(np.int64, copy=False)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_rows):
            bad = rows[(rows < 0) | (rows >= self.n_rows)][0]
            raise IndexError(f"{self.path}[{self.key}]: row {bad} outside [0, {self.n_rows}).")
        if self._mem is not None:
            got = self._mem[rows]
            return got if self.encoding == "dense" else got.toarray()
        uniq, inverse = np.unique(rows, return_inverse=True)
        cut = np.flatnonzero(np.diff(uniq) != 1) + 1  # contiguous runs of the sorted rows
        starts = uniq[np.r_[0, cut]] if uniq.size else uniq
        stops = uniq[np.r_[cut - 1, uniq.size - 1]] + 1 if uniq.size else uniq
        if self.encoding == "dense":
            block = self._take(self._node, starts, stops)
            return block[inverse].astype(self.dtype, copy=False)
        lo, hi = self._indptr[starts], self._indptr[stops]
        data = self._take(f"{self._node}/data", lo, hi).astype(self.dtype, copy=False)
        indices = self._take(f"{self._node}/indices", lo, hi)
        nnz = self._indptr[uniq + 1] - self._indptr[uniq]  # the runs hold exactly uniq
        indptr = np.r_[0, np.cumsum(nnz)]
        block = sp.csr_matrix((data, indices, indptr), shape=(uniq.size, self.n_cols))
        return block[inverse].toarray()

    def _take(self, name: str, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
        """First-axis ranges ``[starts[i], stops[i])`` of dataset ``name``, concatenated.

        From the memory map when the dataset has one (file dtype), else one HDF5 read of a
        union of hyperslabs (converted to ``dtype`` by HDF5).
        """
        plan = self._plans.get(name)
        if plan is None:
            return _read_runs(self._handle()[name], starts, stops, self.dtype)
        lengths = stops - starts
        idx = np.arange(lengths.sum()) + np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        mapped = self._map(name)
        if plan[0] == "contiguous":
            return mapped[idx]
        _, chunk_len, chunk_items = plan  # element i lies in chunk i // chunk_len
        chunk = idx // chunk_len
        return mapped[chunk_items[chunk] + idx - chunk * chunk_len]

    def _map(self, name: str) -> np.ndarray:
        """The memory map of dataset ``name`` in this process (rebuilt after fork/pickle)."""
        if self._maps_pid != os.getpid():
            self._maps, self._maps_pid = {}, os.getpid()
        if name not in self._maps:
            plan, ds = self._plans[name], self._handle()[name]
            if plan[0] == "contiguous":
                mapped = np.memmap(self.path, ds.dtype, "r", offset=plan[1], shape=ds.shape)
            else:  # the whole file as items; the chunk offsets are multiples of itemsize
                n_items = self.path.stat().st_size // ds.dtype.itemsize
                mapped = np.memmap(self.path, ds.dtype, "r", shape=(n_items,))
            self._maps[name] = mapped
        return self._maps[name]

    def _plan_direct(self, names: list[str]) -> None:
        """Memory-map the datasets that allow it, checked against HDF5 on their ends."""
        self._plans: dict[str, tuple] = {}
        self._maps: dict[str, np.ndarray] = {}
        self._maps_pid: int | None = None
        f = self._handle()
        for name in names:
            plan = _direct_plan(f[name])
            if plan is None:
                continue
            self._plans[name] = plan
            n = f[name].shape[0]
            ends = np.array([0, n - 1]), np.array([1, n])
            direct = self._take(name, *ends)
            if not np.array_equal(direct, _read_runs(f[name], *ends, f[name].dtype)):
                logger.warning(
                    "%s: memory map of /%s disagrees with HDF5; not used.", self.path, name
                )
                del self._plans[name]

    def _preload(self) -> None:
        """Read the whole matrix into RAM (a CSR matrix stays CSR)."""
        f = self._handle()
        if self.encoding == "dense":
            self._mem = _read_all(f[self._node], self.dtype)
        else:
            group = f[self._node]
            data = _read_all(group["data"], self.dtype)
            indices = _read_all(group["indices"], group["indices"].dtype)
            shape = (self.n_rows, self.n_cols)
            self._mem = sp.csr_matrix((data, indices, self._indptr), shape=shape)

    def _resolve(self, f: h5py.File) -> h5py.Dataset | h5py.Group:
        """The HDF5 node of ``key``, checked to be a dense or CSR matrix."""
        key = self.key
        name = key if key == "X" or key.startswith(("obsm/", "layers/")) else f"obsm/{key}"
        node = f.get(name)
        if node is None:
            obsm, layers = _keys(f, "obsm"), _keys(f, "layers")
            choices = ["X", *obsm, *(f"obsm/{k}" for k in obsm), *(f"layers/{k}" for k in layers)]
            raise InputError(
                f"{self.path}: no matrix {key!r} (looked for /{name}). Expected 'X', an obsm "
                f"key or 'layers/<name>'; obsm keys: {obsm or 'none'}; layers: "
                f"{[f'layers/{k}' for k in layers] or 'none'}.{suggest(key, choices)}"
            )
        if isinstance(node, h5py.Dataset):
            return node
        enc = node.attrs.get("encoding-type", node.attrs.get("h5sparse_format", ""))
        enc = enc.decode() if isinstance(enc, bytes) else str(enc)
        if enc in ("csr_matrix", "csr"):
            return node
        if enc in ("csc_matrix", "csc"):
            raise InputError(
                f"{self.path}: {key!r} (/{name}) is a CSC sparse matrix; rows cannot be read "
                f"without loading whole columns. Fix: {_CSC_FIX}."
            )
        raise InputError(
            f"{self.path}: {key!r} (/{name}) has encoding {enc or 'unknown'!r}; expected a "
            f"dense array or a CSR matrix (not a dataframe, awkward array or CSC)."
        )


def _keys(f: h5py.File, group: str) -> list[str]:
    """Names of the elements of ``group`` (empty when absent)."""
    node = f.get(group)
    return sorted(node.keys()) if isinstance(node, h5py.Group) else []


def _read_runs(ds: h5py.Dataset, starts: np.ndarray, stops: np.ndarray, dtype) -> np.ndarray:
    """Read the first-axis ranges ``[starts[i], stops[i])`` of ``ds``, concatenated.

    h5py's ``dataset[...]`` takes one slice per call (~40 us each), so each group of
    ``_RUNS_PER_READ`` runs is one HDF5 read of a union of hyperslabs into a slice of the
    output, converted to ``dtype`` by HDF5.
    """
    lengths = stops - starts
    keep = lengths > 0
    starts, lengths = starts[keep].tolist(), lengths[keep].tolist()
    tail = tuple(int(s) for s in ds.shape[1:])
    bounds = np.cumsum([0, *lengths])
    out = np.empty((int(bounds[-1]), *tail), dtype=dtype)
    if out.size == 0:
        return out
    zeros = (0,) * len(tail)
    for first in range(0, len(starts), _RUNS_PER_READ):
        last = min(first + _RUNS_PER_READ, len(starts))
        space = ds.id.get_space()
        space.select_none()
        for i in range(first, last):
            space.select_hyperslab((starts[i], *zeros), (lengths[i], *tail), op=h5s.SELECT_OR)
        lo, hi = int(bounds[first]), int(bounds[last])
        ds.id.read(h5s.create_simple((hi - lo, *tail)), space, out[: hi - lo])
    return out


def _direct_plan(ds: h5py.Dataset) -> tuple | None:
    """Where the elements of ``ds`` lie in the file, when it can be memory-mapped.

    ``("contiguous", byte_offset)`` for an allocated contiguous dataset, or ``("chunked",
    chunk_len, first_item_of_each_chunk)`` for a 1-D chunked dataset without filters (as
    anndata writes CSR ``data``/``indices``) whose chunks all exist and are aligned to the
    itemsize; else ``None`` (compressed, filtered, external, virtual: read through HDF5).
    HDF5 reports absolute file offsets (a user block included).
    """
    plist = ds.id.get_create_plist()
    if ds.is_virtual or plist.get_external_count() or ds.size == 0 or ds.dtype.kind not in "iuf":
        return None
    if plist.get_layout() == h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        return None if offset is None else ("contiguous", int(offset))
    if plist.get_layout() != h5d.CHUNKED or plist.get_nfilters() or ds.ndim != 1:
        return None
    chunk_len = int(ds.chunks[0])
    offsets = np.full(-(-ds.shape[0] // chunk_len), -1, dtype=np.int64)

    def visit(info: Any) -> None:
        offsets[info.chunk_offset[0] // chunk_len] = info.byte_offset

    try:
        ds.id.chunk_iter(visit)  # HDF5 >= 1.12.3 / 1.14
    except (AttributeError, RuntimeError, ValueError):
        return None
    itemsize = ds.dtype.itemsize
    if (offsets < 0).any() or (offsets % itemsize).any():
        return None
    return ("chunked", chunk_len, offsets // itemsize)


def _read_all(ds: h5py.Dataset, dtype) -> np.ndarray:
    """The whole dataset in ``dtype`` (HDF5 converts while reading)."""
    out = np.empty(ds.shape, dtype=dtype)
    if out.size:
        ds.read_direct(out)
    return out


def h5ad_identity(path: str | os.PathLike, *, edge_mib: float = 1.0) -> dict[str, Any]:
    """What a cache key needs to notice that an h5ad file changed.

    Returns the absolute path, size, ``mtime_ns``, ``n_obs``, ``n_vars`` and ``fingerprint``:
    sha256 of the first and last ``edge_mib`` MiB of the file, the names of the ``/obs``
    elements and the shape. Costs two small reads, whatever the file size.

    Limits: an in-place edit in the middle of a large file that keeps the size, the obs
    columns and the shape, AND restores the mtime (``touch -d``, some copy tools) goes
    unnoticed; a byte-identical file at another path gets another identity (the key is
    conservative); the mtime resolution is the filesystem's.

    Args:
        path: The h5ad file.
        edge_mib: How much of each end of the file is hashed.

    Returns:
        A JSON-serialisable dict.

    Raises:
        InputError: Missing or non-HDF5 file.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise InputError(f"{path}: no such h5ad file.")
    stat = path.stat()
    digest = hashlib.sha256()
    edge = int(edge_mib * _MIB)
    with path.open("rb") as fh:
        digest.update(fh.read(edge))
        fh.seek(max(stat.st_size - edge, 0))
        digest.update(fh.read(edge))
    try:
        with h5py.File(path, "r") as f:
            obs_names, n_obs = _element_names(f, "obs")
            _, n_vars = _element_names(f, "var")
    except OSError as err:
        raise InputError(f"{path}: not a readable h5ad (HDF5) file: {err}") from err
    digest.update("\0".join(obs_names).encode())
    digest.update(f"{n_obs}x{n_vars}".encode())
    return {
        "path": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "n_obs": n_obs,
        "n_vars": n_vars,
        "fingerprint": digest.hexdigest(),
    }


def _element_names(f: h5py.File, name: str) -> tuple[list[str], int]:
    """Element names and length of an obs/var dataframe (group or old compound dataset)."""
    node = f.get(name)
    if isinstance(node, h5py.Dataset):
        return list(node.dtype.names or ()), int(node.shape[0])
    if not isinstance(node, h5py.Group):
        return [], -1
    index = node.attrs.get("_index", "_index")
    index = index.decode() if isinstance(index, bytes) else str(index)
    n = int(node[index].shape[0]) if isinstance(node.get(index), h5py.Dataset) else -1
    return sorted(node.keys()), n
