"""First-axis row ranges of one HDF5 dataset: union-of-hyperslab reads and memory-map plans.

The low-level reads of :class:`~perturbflow.loading.h5reader.H5RowReader`:
:func:`read_runs` reads many ranges through HDF5 with one call per :data:`RUNS_PER_READ`
ranges (HDF5 converts to the wanted dtype while reading), :func:`map_plan` tells where an
uncompressed dataset's elements lie in the file so that it can be memory-mapped instead,
and :func:`read_all` reads a whole dataset.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np
from h5py import h5d, h5s

RUNS_PER_READ = 128  # runs per HDF5 read: more was slower (HDF5's hyperslab-union cost)


def read_runs(ds: h5py.Dataset, starts: np.ndarray, stops: np.ndarray, dtype) -> np.ndarray:
    """The first-axis ranges ``[starts[i], stops[i])`` of ``ds`` through HDF5, concatenated.

    h5py's ``dataset[...]`` takes one slice per call (~40 us each): each group of
    ``RUNS_PER_READ`` runs is one read of a union of hyperslabs instead.
    """
    lengths = stops - starts
    starts, lengths = starts[lengths > 0].tolist(), lengths[lengths > 0].tolist()
    tail = tuple(int(s) for s in ds.shape[1:])
    bounds = np.cumsum([0, *lengths])
    out = np.empty((int(bounds[-1]), *tail), dtype=dtype or ds.dtype)
    if out.size == 0:
        return out
    for first in range(0, len(starts), RUNS_PER_READ):
        last = min(first + RUNS_PER_READ, len(starts))
        space = ds.id.get_space()
        space.select_none()
        for i in range(first, last):
            space.select_hyperslab(
                (starts[i], *[0] * len(tail)), (lengths[i], *tail), op=h5s.SELECT_OR
            )
        lo, hi = int(bounds[first]), int(bounds[last])
        ds.id.read(h5s.create_simple((hi - lo, *tail)), space, out[lo:hi])
    return out


def map_plan(ds: h5py.Dataset) -> tuple | None:
    """Where the elements of ``ds`` lie in the file, when it can be memory-mapped.

    ``("contiguous", byte_offset)``; ``("chunked", chunk_len, first item of each chunk)`` for
    a 1-D chunked dataset without filters whose chunks all exist and are aligned to the
    itemsize; else ``None`` (compressed, filtered, external, virtual). HDF5's offsets are
    absolute (a user block included).
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
    if (offsets < 0).any() or (offsets % ds.dtype.itemsize).any():
        return None
    return ("chunked", chunk_len, offsets // ds.dtype.itemsize)


def read_all(ds: h5py.Dataset, dtype) -> np.ndarray:
    """The whole dataset in ``dtype`` (HDF5 converts while reading)."""
    out = np.empty(ds.shape, dtype=dtype)
    if out.size:
        ds.read_direct(out)
    return out
