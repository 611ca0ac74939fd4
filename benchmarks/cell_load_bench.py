"""Measure Arc's cell-load 0.10.4 on a file written by ``benchmarks/loader_data.py``.

Runs in its own virtualenv (see benchmarks/README.md), never in the project's::

    /tmp/venv-cellload/bin/python benchmarks/cell_load_bench.py \
        --csr /tmp/bench/synth_50000x2000_d0.1_s0.h5ad \
        [--dense /tmp/bench/synth_50000x2000_d0.1_s0_dense.h5ad] \
        --out /tmp/bench/cell_load_50k.json [--workers 0 2] [--rdcc 1048576 default] \
        [--batches 30] [--warmup 3] [--repeats 1]

Every (file, num_workers, CELL_LOAD_H5_RDCC_NBYTES) combination runs in a fresh child process
(so peak RSS, cell-load's per-process LRU row cache and its global metadata cache are per run).
A run builds ``PerturbationDataModule`` from a generated TOML (one dataset, all cell types in
training), random control mapping, cell sentences of 64, batch size 16, and pulls batches
from ``train_dataloader()``. cells/s counts the perturbed plus the control rows of each batch
(2 x 16 x 64) over the timed batches, after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

RDCC_ENV = "CELL_LOAD_H5_RDCC_NBYTES"


def run_one(cfg: dict) -> dict:
    """One measurement, in this process: set up cell-load, time its batches, report."""
    import numpy as np
    import torch
    from cell_load.data_modules import PerturbationDataModule
    from cell_load.dataset import PerturbationDataset

    np.random.seed(cfg["seed"])  # cell-load's sampler draws from numpy's global RNG
    torch.manual_seed(cfg["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        toml_path = Path(tmp) / "bench.toml"
        toml_path.write_text(
            f'[datasets]\nbench = "{cfg["path"]}"\n\n[training]\nbench = "train"\n'
        )
        t0 = time.perf_counter()
        dm = PerturbationDataModule(
            toml_config_path=str(toml_path),
            batch_size=cfg["batch_size"],
            num_workers=cfg["workers"],
            random_seed=cfg["seed"],
            pert_col=cfg["pert_col"],
            batch_col=cfg["batch_col"],
            cell_type_key=cfg["celltype_col"],
            control_pert=cfg["control_label"],
            embed_key=None,  # read X itself (no obsm embedding)
            output_space="gene",
            basal_mapping_strategy="random",
            n_basal_samples=1,
            cell_sentence_len=cfg["sentence_len"],
        )
        t1 = time.perf_counter()
        dm.setup()
        t2 = time.perf_counter()
        loader = dm.train_dataloader()  # builds the sampler: groups cells into sentences
        t3 = time.perf_counter()
        it = iter(loader)
        batch = next(it)  # starts the workers; first batch
        t4 = time.perf_counter()
    n_epoch = len(loader)
    n_timed = min(cfg["batches"], n_epoch - 1 - cfg["warmup"])
    for _ in range(cfg["warmup"]):
        next(it)
    cells = 0
    sink = 0.0
    stamps = [time.perf_counter()]
    for _ in range(n_timed):
        batch = next(it)
        cells += batch["pert_cell_emb"].shape[0] + batch["ctrl_cell_emb"].shape[0]
        sink += float(batch["pert_cell_emb"][0, 0])  # touch the data like a training step
        stamps.append(time.perf_counter())
    seconds = stamps[-1] - stamps[0]
    batch_ms = 1000 * np.diff(stamps)
    timed = loader.batch_sampler.batches[1 + cfg["warmup"] : 1 + cfg["warmup"] + n_timed]
    unique = float(np.mean([len(set(b)) for b in timed])) if timed else float("nan")
    cache = PerturbationDataset._fetch_gene_expression_raw.cache_info()
    # Peak RSS of each live DataLoader worker. RUSAGE_CHILDREN alone is not enough: importing
    # cell_load forks `uname -p` (platform.processor), whose inherited RSS masks small workers.
    workers_kib = [_peak_rss_kib(w.pid) for w in getattr(it, "_workers", [])]
    if hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "file": cfg["path"],
        "layout": cfg["layout"],
        "num_workers": cfg["workers"],
        "rdcc_nbytes": os.environ.get(RDCC_ENV, "default (64 MiB)"),
        "h5_open_kwargs": dm.train_datasets[0].dataset.h5_open_kwargs,
        "cells_per_s": round(cells / seconds),
        "batch_ms": round(1000 * seconds / max(n_timed, 1), 1),
        "batch_ms_median": round(float(np.median(batch_ms)), 1) if n_timed else None,
        "batch_ms_max": round(float(np.max(batch_ms)), 1) if n_timed else None,
        "cells_per_batch": cells // max(n_timed, 1),
        "timed_batches": n_timed,
        "warmup_batches": cfg["warmup"],
        "batches_per_epoch": n_epoch,
        "unique_pert_rows_per_batch": round(unique, 1),
        "main_process_row_cache": {"hits": cache.hits, "misses": cache.misses},
        "setup_seconds": {
            "datamodule_init": round(t1 - t0, 2),
            "setup_pairing": round(t2 - t1, 2),
            "sampler_sentences": round(t3 - t2, 2),
            "first_batch": round(t4 - t3, 2),
            "total_to_first_batch": round(t4 - t0, 2),
        },
        "peak_rss_mib": {
            "self": round(self_kib / 1024, 1),
            "workers": [round(k / 1024, 1) for k in workers_kib],
            "self_plus_workers": round((self_kib + sum(workers_kib)) / 1024, 1),
            "rusage_children_max": round(child_kib / 1024, 1),
        },
    }


def _peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident set) of a live process, in KiB; 0 where /proc cannot say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csr", type=Path, help="CSR h5ad from loader_data.py")
    parser.add_argument("--dense", type=Path, help="dense h5ad with the same values")
    parser.add_argument("--out", type=Path, help="JSON result")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument(
        "--rdcc", nargs="+", default=["1048576", "default"], help="CELL_LOAD_H5_RDCC_NBYTES"
    )
    parser.add_argument("--batches", type=int, default=30, help="timed batches")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sentence-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pert-col", default="perturbation")
    parser.add_argument("--celltype-col", default="cell_type")
    parser.add_argument("--batch-col", default="batch")
    parser.add_argument("--control-label", default="non-targeting")
    parser.add_argument("--repeats", type=int, default=1, help="runs per config (median)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(json.loads(args.child))))
        return
    if args.csr is None or args.out is None:
        parser.error("--csr and --out are required")
    files = [("csr", args.csr)] + ([("dense", args.dense)] if args.dense else [])
    for _, path in files:
        if not path.is_file():
            parser.error(f"{path}: no such file; generate it with benchmarks/loader_data.py")
    # The chunk cache only matters for chunked datasets: CSR arrays are chunked (as anndata
    # writes them), the dense X is contiguous, so the dense file runs with the first --rdcc only.
    combos = [
        (layout, path, workers, rdcc)
        for layout, path in files
        for workers in args.workers
        for rdcc in (args.rdcc if layout == "csr" else args.rdcc[:1])
    ]
    report = {
        "loader": "cell-load",
        "cell_load_version": version("cell-load"),
        "torch": version("torch"),
        "h5py": version("h5py"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "sentence_len": args.sentence_len,
        "batch_size": args.batch_size,
        "mapping": "random",
        "repeats": args.repeats,
        "summary": [],
        "runs": [],
    }
    for layout, path, workers, rdcc in combos:
        cfg = {
            "path": str(path.resolve()),
            "layout": layout,
            "workers": workers,
            "batches": args.batches,
            "warmup": args.warmup,
            "sentence_len": args.sentence_len,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "pert_col": args.pert_col,
            "celltype_col": args.celltype_col,
            "batch_col": args.batch_col,
            "control_label": args.control_label,
        }
        env = {k: v for k, v in os.environ.items() if k != RDCC_ENV}
        if rdcc != "default":
            env[RDCC_ENV] = rdcc
        label = f"{layout} workers={workers} rdcc={rdcc}"
        results = []
        for repeat in range(args.repeats):
            print(f"running {label} ({repeat + 1}/{args.repeats}) ...", flush=True)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(cfg)],
                env=env,
                capture_output=True,
                text=True,
                timeout=args.timeout,
            )
            if proc.returncode != 0:
                sys.exit(f"{label} failed:\n{proc.stderr[-4000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"  {result['cells_per_s']} cells/s, setup "
                f"{result['setup_seconds']['total_to_first_batch']} s",
                flush=True,
            )
            results.append(result)
        report["runs"] += results
        report["summary"].append(_summarise(label, results))
        _write_json(args.out, report)  # after every config: a later failure keeps the rest
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {args.out}")


def _summarise(label: str, results: list[dict]) -> dict:
    """Median cells/s and setup time, largest peak RSS, over the repeats of one config."""
    return {
        "config": label,
        "cells_per_s_median": statistics.median(r["cells_per_s"] for r in results),
        "cells_per_s_all": [r["cells_per_s"] for r in results],
        "setup_to_first_batch_s_median": statistics.median(
            r["setup_seconds"]["total_to_first_batch"] for r in results
        ),
        "peak_rss_mib_self_plus_workers_max": max(
            r["peak_rss_mib"]["self_plus_workers"] for r in results
        ),
        "unique_pert_rows_per_batch": results[0]["unique_pert_rows_per_batch"],
    }


def _write_json(path: Path, payload: dict) -> None:
    """Write JSON through a temporary file and a rename (perturbflow is not installed here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
