"""Generate the synthetic screens of the loader benchmark, and measure the in-RAM ceiling.

Usage (from the project root, in the project's environment)::

    python benchmarks/loader_data.py --cells 1000000 --genes 2000 --density 0.1 \
        --out-dir /tmp/bench [--seed 0] [--no-dense] [--ceiling-out ceiling.json]

Writes ``<stem>.h5ad`` (X as CSR float32), ``<stem>_dense.h5ad`` (the same values, dense) and
``<stem>.json`` (parameters, sizes, timing). A second call with the same parameters finds the
sidecar and skips the work. X is generated and written in row chunks straight through h5py,
so a matrix far larger than RAM can be written; obs and var are written by anndata itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from h5py._hl.filters import guess_chunk

from perturbflow.exceptions import InputError
from perturbflow.io_utils import atomic_path

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
ROWS_PER_CHUNK = 8192  # part of the seeded stream: changing it changes the values
N_PERTURBATIONS = 1000
CONTROL_LABEL = "non-targeting"
CONTROL_FRACTION = 0.05
N_CELL_TYPES = 4
N_BATCHES = 50
DATASET_NAME = "synthetic"
OBS_COLUMNS = {
    "pert_col": "perturbation",
    "celltype_col": "cell_type",
    "batch_col": "batch",
    "dataset_col": "dataset",
}


def dataset_stem(n_cells: int, n_genes: int, density: float, seed: int) -> str:
    """File stem shared by the CSR file, the dense file and the JSON sidecar."""
    return f"synth_{n_cells}x{n_genes}_d{density:g}_s{seed}"


def generate_dataset(
    n_cells: int,
    n_genes: int,
    density: float,
    out_dir: str | Path,
    *,
    seed: int = 0,
    dense: bool = True,
) -> dict:
    """Write (once) a synthetic screen as CSR h5ad and, optionally, as dense h5ad.

    Each entry is non-zero with probability ``density``; a non-zero value is
    ``log1p(1 + floor(Exp(1) * gene_scale))`` with a log-normal per-gene scale, so the values
    look like log1p counts. obs holds ``perturbation`` (1,000 targets plus ~5 % ``non-targeting``
    controls), ``cell_type`` (4), ``batch`` (50) and ``dataset``, all categorical.

    Args:
        n_cells: Rows.
        n_genes: Columns.
        density: Fraction of non-zero entries, in (0, 1].
        out_dir: Folder for the files.
        seed: Seed; the same seed gives the same files.
        dense: Also write the dense variant.

    Returns:
        The sidecar record: ``params``, ``files`` (absolute paths), ``nnz``, ``bytes``,
        ``generation_seconds`` and ``cached`` (True when nothing had to be written).

    Raises:
        InputError: Bad sizes, or too little free disk space in ``out_dir``.
    """
    if n_cells < 1 or n_genes < 1 or not 0.0 < density <= 1.0:
        raise InputError(
            f"--cells and --genes must be >= 1 and --density in (0, 1]; got cells={n_cells}, "
            f"genes={n_genes}, density={density}."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = dataset_stem(n_cells, n_genes, density, seed)
    params = {
        "cells": n_cells,
        "genes": n_genes,
        "density": density,
        "seed": seed,
        "rows_per_chunk": ROWS_PER_CHUNK,
        "format_version": FORMAT_VERSION,
    }
    sidecar = out_dir / f"{stem}.json"
    cached = _cached_record(sidecar, params, dense)
    if cached is not None:
        logger.info("Reusing %s (parameters match %s)", cached["files"]["csr"], sidecar)
        return {**cached, "cached": True}

    csr_path = out_dir / f"{stem}.h5ad"
    dense_path = out_dir / f"{stem}_dense.h5ad" if dense else None
    _check_disk(out_dir, n_cells, n_genes, density, dense)
    started = time.perf_counter()
    rng = np.random.default_rng([seed, 0])
    obs, var = _make_obs(n_cells, rng), _make_var(n_genes)
    gene_scale = rng.lognormal(0.0, 1.0, n_genes).astype(np.float32)
    with ExitStack() as stack:
        csr_tmp = stack.enter_context(atomic_path(csr_path))
        dense_tmp = stack.enter_context(atomic_path(dense_path)) if dense else None
        nnz = _write_x(csr_tmp, dense_tmp, obs, var, gene_scale, density, seed)
    seconds = time.perf_counter() - started
    files = {"csr": str(csr_path.resolve())}
    if dense_path is not None:
        files["dense"] = str(dense_path.resolve())
    record = {
        "params": params,
        "dense": dense,
        "files": files,
        "nnz": nnz,
        "bytes": {k: Path(v).stat().st_size for k, v in files.items()},
        "generation_seconds": round(seconds, 1),
        "obs_columns": {**OBS_COLUMNS, "control_label": CONTROL_LABEL},
    }
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    logger.info("Wrote %s in %.1f s: %s", stem, seconds, record["bytes"])
    return {**record, "cached": False}


def _cached_record(sidecar: Path, params: dict, dense: bool) -> dict | None:
    """The sidecar's record when it matches ``params`` and its files are intact, else None."""
    if not sidecar.exists():
        return None
    record = json.loads(sidecar.read_text())
    if record.get("params") != params or (dense and not record.get("dense")):
        return None
    for key, path in record["files"].items():
        if not Path(path).exists() or Path(path).stat().st_size != record["bytes"][key]:
            return None
    return record


def _check_disk(out_dir: Path, n_cells: int, n_genes: int, density: float, dense: bool) -> None:
    """Raise before writing when ``out_dir`` lacks room for the files (10 % margin)."""
    need = 8 * n_cells * n_genes * density + 8 * n_cells + (4 * n_cells * n_genes if dense else 0)
    free = shutil.disk_usage(out_dir).free
    if need * 1.1 > free:
        raise InputError(
            f"{out_dir}: {free / 2**30:.1f} GiB free, but the files need about "
            f"{need / 2**30:.1f} GiB; choose another --out-dir or pass --no-dense."
        )


def _make_obs(n_cells: int, rng: np.random.Generator) -> pd.DataFrame:
    """Categorical obs: perturbation (with controls), cell type, batch and dataset name."""
    perts = [CONTROL_LABEL] + [f"G{i:05d}" for i in range(N_PERTURBATIONS)]  # targets = genes
    pert_codes = rng.integers(1, N_PERTURBATIONS + 1, n_cells)
    pert_codes[rng.random(n_cells) < CONTROL_FRACTION] = 0
    obs = pd.DataFrame(
        {
            OBS_COLUMNS["pert_col"]: pd.Categorical.from_codes(pert_codes, perts),
            OBS_COLUMNS["celltype_col"]: pd.Categorical.from_codes(
                rng.integers(0, N_CELL_TYPES, n_cells), [f"ct{i}" for i in range(N_CELL_TYPES)]
            ),
            OBS_COLUMNS["batch_col"]: pd.Categorical.from_codes(
                rng.integers(0, N_BATCHES, n_cells), [f"b{i:02d}" for i in range(N_BATCHES)]
            ),
            OBS_COLUMNS["dataset_col"]: pd.Categorical.from_codes(
                np.zeros(n_cells, dtype=np.int8), [DATASET_NAME]
            ),
        },
        index=pd.Index(np.char.add("cell", np.arange(n_cells).astype(str)), dtype=str),
    )
    return obs


def _make_var(n_genes: int) -> pd.DataFrame:
    """var indexed by gene names ``G00000``..., the names the perturbations target."""
    names = np.char.add("G", np.char.zfill(np.arange(n_genes).astype(str), 5))
    return pd.DataFrame(index=pd.Index(names, dtype=str))


def _write_x(
    csr_path: Path,
    dense_path: Path | None,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    gene_scale: np.ndarray,
    density: float,
    seed: int,
) -> int:
    """Write obs/var with anndata, then X chunk by chunk with h5py; return the nnz."""
    n_cells, n_genes = len(obs), len(var)
    for path in filter(None, (csr_path, dense_path)):
        ad.AnnData(obs=obs, var=var).write_h5ad(path)  # no X yet: anndata writes the rest
    with ExitStack() as stack:
        csr = stack.enter_context(h5py.File(csr_path, "r+"))
        group = csr.create_group("X")
        # The encoding attributes and resizable, auto-chunked 1-D arrays anndata itself writes.
        group.attrs.update(
            {
                "encoding-type": "csr_matrix",
                "encoding-version": "0.1.0",
                "shape": (n_cells, n_genes),
            }
        )
        expected = max(int(n_cells * n_genes * density), 1)
        arrays = {
            name: group.create_dataset(
                name, (0,), dtype, maxshape=(None,), chunks=guess_chunk((expected,), (None,), size)
            )
            for name, dtype, size in (("data", np.float32, 4), ("indices", np.int32, 4))
        }
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        x_dense = None
        if dense_path is not None:
            out = stack.enter_context(h5py.File(dense_path, "r+"))
            x_dense = out.create_dataset("X", (n_cells, n_genes), np.float32)  # contiguous
            x_dense.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        started, nnz = time.perf_counter(), 0
        n_chunks = -(-n_cells // ROWS_PER_CHUNK)
        for k, lo in enumerate(range(0, n_cells, ROWS_PER_CHUNK)):
            hi = min(lo + ROWS_PER_CHUNK, n_cells)
            rng = np.random.default_rng([seed, 1, k])
            u = rng.random((hi - lo, n_genes), dtype=np.float32)
            rows, cols = np.nonzero(u < density)  # row-major: CSR order, sorted columns
            # Given u < density, u / density is uniform(0, 1): reuse it for the value.
            expo = -np.log(np.maximum(u[rows, cols] / density, np.float32(1e-12)))
            values = np.log1p(1.0 + np.floor(expo * gene_scale[cols])).astype(np.float32)
            for name, block in (("data", values), ("indices", cols.astype(np.int32))):
                arrays[name].resize((nnz + len(block),))
                arrays[name][nnz:] = block
            indptr[lo + 1 : hi + 1] = nnz + np.cumsum(np.bincount(rows, minlength=hi - lo))
            nnz += len(values)
            if x_dense is not None:
                u[:] = 0.0  # reuse the buffer for the dense rows
                u[rows, cols] = values
                x_dense[lo:hi] = u
            if (k + 1) % max(n_chunks // 20, 1) == 0 or hi == n_cells:
                done = time.perf_counter() - started
                logger.info(
                    "rows %d/%d (%.0f%%), %.0f s, ETA %.0f s",
                    hi, n_cells, 100 * hi / n_cells, done, done * (n_cells - hi) / hi,
                )  # fmt: skip
        group.create_dataset("indptr", data=indptr)
    return nnz


def load_dense_rows(csr_path: str | Path, max_cells: int | None = None) -> np.ndarray:
    """Read the first ``max_cells`` rows (all by default) of a CSR h5ad into dense float32."""
    with h5py.File(csr_path, "r") as f:
        n_cells, n_genes = (int(v) for v in f["X"].attrs["shape"])
        n = n_cells if max_cells is None else min(max_cells, n_cells)
        indptr = f["X/indptr"][: n + 1]
        out = np.zeros((n, n_genes), dtype=np.float32)
        for lo in range(0, n, 65536):
            hi = min(lo + 65536, n)
            a, b = int(indptr[lo]), int(indptr[hi])
            block = sp.csr_matrix(
                (f["X/data"][a:b], f["X/indices"][a:b], indptr[lo : hi + 1] - a),
                shape=(hi - lo, n_genes),
            )
            block.toarray(out=out[lo:hi])  # scipy adds into the zeroed slice
    return out


def ram_ceiling_cells_per_s(
    csr_path: str | Path,
    *,
    n_batches: int = 1000,
    warmup: int = 5,
    sentence_len: int = 64,
    batch_size: int = 16,
    max_bytes: int | None = None,
    seed: int = 0,
) -> dict:
    """Cells/s of numpy fancy-indexing random rows out of a preloaded dense float32 matrix.

    The ceiling of any loader: every batch gathers ``sentence_len * batch_size`` perturbed and
    as many control rows (2 x 1,024 by default) from RAM, with no file access at all.

    Args:
        csr_path: CSR h5ad written by :func:`generate_dataset`.
        n_batches: Timed batches.
        warmup: Untimed batches first.
        sentence_len: Cells per sentence.
        batch_size: Sentences per batch.
        max_bytes: Cap on the preloaded matrix (default: half of MemAvailable); only the
            first rows that fit are loaded, and ``subset`` says so.
        seed: Seed of the row draws.

    Returns:
        ``cells_per_s``, ``batch_ms``, ``rows_loaded``, ``subset``, ``load_seconds``, ...
    """
    with h5py.File(csr_path, "r") as f:
        n_cells, n_genes = (int(v) for v in f["X"].attrs["shape"])
    cap = max_bytes if max_bytes is not None else _mem_available() // 2
    rows = min(n_cells, cap // (4 * n_genes))
    started = time.perf_counter()
    x = load_dense_rows(csr_path, rows)
    load_seconds = time.perf_counter() - started
    rng = np.random.default_rng(seed)
    per_batch = 2 * sentence_len * batch_size
    sink = 0.0
    for i in range(warmup + n_batches):
        if i == warmup:
            started = time.perf_counter()
        batch = x[rng.integers(0, rows, per_batch)]
        sink += float(batch[0, 0])  # touch the result so the gather is not skipped
    seconds = time.perf_counter() - started
    return {
        "cells_per_s": round(n_batches * per_batch / seconds),
        "batch_ms": round(1000 * seconds / n_batches, 3),
        "cells_per_batch": per_batch,
        "n_batches": n_batches,
        "rows_loaded": rows,
        "rows_in_file": n_cells,
        "subset": rows < n_cells,
        "load_seconds": round(load_seconds, 1),
        "matrix_gib": round(x.nbytes / 2**30, 2),
    }


def _mem_available() -> int:
    """MemAvailable from /proc/meminfo in bytes (8 GiB where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, required=True)
    parser.add_argument("--genes", type=int, required=True)
    parser.add_argument("--density", type=float, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-dense", action="store_true", help="skip the dense variant")
    parser.add_argument("--ceiling-out", type=Path, help="also measure the RAM ceiling to JSON")
    parser.add_argument("--ceiling-batches", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    record = generate_dataset(
        args.cells, args.genes, args.density, args.out_dir, seed=args.seed, dense=not args.no_dense
    )
    print(json.dumps(record, indent=2))
    if args.ceiling_out:
        result = {
            "file": record["files"]["csr"],
            **ram_ceiling_cells_per_s(record["files"]["csr"], n_batches=args.ceiling_batches),
        }
        args.ceiling_out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.ceiling_out) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
