"""Loader benchmark: perturbflow's data layer beside Arc's cell-load on the same file.

Usage (from the project root, in the project's environment):
    python benchmarks/loader.py --cells 1000000 --genes 2000 --density 0.1 --out FILE.json \
        [--data-dir /tmp/bench] [--batches 100] [--cell-load-python /tmp/venv-cellload/bin/python]

Generates (once, cached) a CSR h5ad of N x G at density D plus a dense copy
(`benchmarks/loader_data.py`), then measures, each configuration in its own process so
peak RSS is its own:
- perturbflow cells/s delivered to a training loop (perturbed + control cells; sentences
  of 64, batch 16, random pairing) for lazy CSR, lazy dense and preload, workers 0 and 2;
- cell-load 0.10.4 on the same files and settings (`benchmarks/cell_load_bench.py`, run
  with the Python of a separate environment that has cell-load; see benchmarks/README.md);
- the in-RAM ceiling: numpy fancy-indexing of the same random rows from a dense array;
- pairing time of all cells and peak RSS.
Writes every figure to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loader_data  # noqa: E402 (the sibling module of this script)

SENTENCE_LEN, BATCH_SIZE = 64, 16


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _peak_rss_mib() -> float:
    """Peak RSS of this process (VmHWM) plus the largest child's (DataLoader workers).

    VmHWM counts file-backed pages too: pages of a memory-mapped h5ad that a lazy reader
    touched are resident but reclaimable page cache, not heap. ``peak_anon_mib`` (sampled)
    is the process's own anonymous memory.
    """
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return round(_status_mib("VmHWM") + children, 1)


def _columns():
    from perturbflow.params import ColumnsParams

    return ColumnsParams(
        **loader_data.OBS_COLUMNS,
        control_label=loader_data.CONTROL_LABEL,
        dataset_name=loader_data.DATASET_NAME,
    )


def measure_perturbflow(
    path: str, *, preload: bool, workers: int, batches: int, warmup: int
) -> dict:
    """Cells/s of the DataModule's training loader on ``path`` (run in a fresh process)."""
    import anndata as ad

    from perturbflow.loading.datamodule import PerturbationDataModule
    from perturbflow.params import LoaderParams, SplitsParams, SplitSpec
    from perturbflow.splits import split_table_from_params

    started = time.perf_counter()
    backed = ad.read_h5ad(path, backed="r")
    obs = backed.obs.copy()
    backed.file.close()
    columns = _columns()
    everything = SplitsParams(
        splits={"all": SplitSpec(toml=None, training={}, zeroshot={}, fewshot={})}
    )
    table = split_table_from_params(obs, everything, columns, project_root=Path("."))
    params = LoaderParams(
        obsm_key=None,
        cell_set_len=SENTENCE_LEN,
        batch_size=BATCH_SIZE,
        num_workers=workers,
        pin_memory=False,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        pairing="random",
        pairing_kwargs={},
        include_control_sentences=False,
        preload=preload,
        memory_budget_mib=64 * 1024,
        seed=0,
    )
    module = PerturbationDataModule(path, obs, table, "all", columns, params)
    loader = module.train_dataloader()
    setup = time.perf_counter() - started
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    cells, t0, peak_anon = 0, time.perf_counter(), _status_mib("RssAnon")
    for _ in range(batches):
        batch = next(iterator)
        cells += batch["pert_cell_emb"].shape[0] * batch["pert_cell_emb"].shape[1] * 2
        peak_anon = max(peak_anon, _status_mib("RssAnon"))
    elapsed = time.perf_counter() - t0
    return {
        "cells_per_s": round(cells / elapsed, 1),
        "batch_ms": round(1000 * elapsed / batches, 2),
        "setup_seconds": round(setup, 2),
        "peak_rss_mib": _peak_rss_mib(),
        "peak_anon_mib": round(peak_anon, 1),
        "rss_file_mib_at_end": round(_status_mib("RssFile"), 1),
    }


def measure_pairing(path: str) -> dict:
    """Time of building the design and pairing every perturbed cell once."""
    import anndata as ad

    from perturbflow.loading.pairing import PairingDesign, get_pairing_strategy

    backed = ad.read_h5ad(path, backed="r")
    obs = backed.obs.copy()
    backed.file.close()
    t0 = time.perf_counter()
    design = PairingDesign.from_obs(obs, _columns())
    rows = np.flatnonzero(~design.is_control)
    get_pairing_strategy("random").pair(design, rows, np.random.default_rng(0))
    return {"pairing_seconds": round(time.perf_counter() - t0, 3), "n_paired": int(len(rows))}


def _child(config: dict) -> dict:
    """Run one measurement in a fresh process and return its JSON."""
    cmd = [sys.executable, __file__, "--child", json.dumps(config)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/bench"))
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--no-dense", action="store_true", help="skip the dense file")
    parser.add_argument("--cell-load-python", default="/tmp/venv-cellload/bin/python")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        config = json.loads(args.child)
        kind = config.pop("kind")
        result = measure_pairing(**config) if kind == "pairing" else measure_perturbflow(**config)
        print(json.dumps(result))
        return

    t0 = time.perf_counter()
    files = loader_data.generate_dataset(
        args.cells, args.genes, args.density, args.data_dir, dense=not args.no_dense
    )
    csr, dense = files["files"]["csr"], files["files"].get("dense")
    result: dict = {
        "cells": args.cells,
        "genes": args.genes,
        "density": args.density,
        "sentence_len": SENTENCE_LEN,
        "batch_size": BATCH_SIZE,
        "data_seconds": round(time.perf_counter() - t0, 1),
        "cpus": os.cpu_count(),
    }
    result.update(_child({"kind": "pairing", "path": csr}))
    runs = {"lazy_csr": (csr, False), "preload": (csr, True)}
    if dense:
        runs["lazy_dense"] = (str(dense), False)
    for name, (path, preload) in runs.items():
        for workers in args.workers:
            config = {"kind": "loader", "path": path, "preload": preload, "workers": workers}
            config |= {"batches": args.batches, "warmup": args.warmup}
            measured = _child(config)
            result[f"perturbflow_{name}_w{workers}"] = measured
            print(f"perturbflow {name} workers={workers}: {measured}", flush=True)
        best = max(result[f"perturbflow_{name}_w{w}"]["cells_per_s"] for w in args.workers)
        result[f"perturbflow_{name}_cells_per_s"] = best
    result["preload_cells_per_s"] = result["perturbflow_preload_cells_per_s"]
    result["peak_rss_mib"] = result["perturbflow_lazy_csr_w0"]["peak_rss_mib"]
    result["peak_anon_mib"] = result["perturbflow_lazy_csr_w0"]["peak_anon_mib"]
    ceiling = loader_data.ram_ceiling_cells_per_s(
        csr, n_batches=args.batches, sentence_len=SENTENCE_LEN, batch_size=BATCH_SIZE
    )
    result["ram_ceiling"] = ceiling
    result["ram_ceiling_cells_per_s"] = ceiling["cells_per_s"]
    if Path(args.cell_load_python).exists():
        tmp = args.data_dir / "cell_load_result.json"
        cmd = [args.cell_load_python, str(Path(__file__).with_name("cell_load_bench.py"))]
        cmd += ["--csr", csr, "--out", str(tmp), "--batches", str(args.batches)]
        cmd += ["--workers", *map(str, args.workers)]
        if dense:
            cmd += ["--dense", str(dense)]
        subprocess.run(cmd, check=True)
        cell_load = json.loads(tmp.read_text())
        result["cell_load"] = cell_load
        csr_runs = [r["cells_per_s"] for r in cell_load["runs"] if r.get("layout") == "csr"]
        result["cell_load_cells_per_s"] = max(csr_runs) if csr_runs else None
    else:
        result["cell_load"] = f"not measured: {args.cell_load_python} not found"
    result["preload_share_of_ram_ceiling"] = round(
        result["perturbflow_preload_cells_per_s"] / result["ram_ceiling_cells_per_s"], 3
    )
    if isinstance(result.get("cell_load_cells_per_s"), int | float):
        result["lazy_csr_vs_cell_load"] = round(
            result["perturbflow_lazy_csr_cells_per_s"] / result["cell_load_cells_per_s"], 2
        )
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
