"""Peak memory and wall time of each pipeline on a generated screen at Replogle scale.

Usage (from the project root, in the project's environment; check `df -h` first: the 2M x
8,000 screen is ~13 GB and the run writes ~3x that):
    python benchmarks/scale.py --cells 1000000 2000000 --genes 8000 \
        --work-dir /tmp/scale --out docs/results/scale.json [--steps 200] [--keep]

For each size, generates a raw-count screen (CSR float32, ``--density`` non-zeros;
``--perturbations`` CRISPRi targets + ``non-targeting``, ``--celltypes`` cell types, 8
batches; each perturbation silences its target gene and shifts 40 other genes), then runs
``kedro run --pipelines preprocessing``, ``splits``, ``pairing_diagnostic`` (every perturbed cell
paired with a control of its context), ``training`` (``--steps`` steps, then the test
predictions) and ``evaluation`` through a conf environment written for it
(``--conf-source`` = conf/base + a ``scale`` environment whose outputs go under the work
dir), and records each step's wall time and peak RSS (the sum over the process tree,
sampled every 0.2 s; ``peak_anon_mib`` leaves out file-backed pages, i.e. the memory-mapped
h5ad data that the kernel reclaims under pressure) with the training throughput from
run.json. Sizes run in the order given; ``--keep`` keeps the generated files (a rerun then
skips the generation); ``--only STEP ...`` reruns some steps on a kept run's outputs (the
other steps' figures are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import psutil
import yaml

from perturbflow.preprocess.h5blocks import CSRAppender

ROOT = Path(__file__).resolve().parents[1]
BLOCK_ROWS = 4096
STEPS = ("preprocessing", "splits", "pairing", "training", "evaluation")
# the pipeline each step runs (the step names are the keys of docs/results/scale.json)
PIPELINES = {"pairing": "pairing_diagnostic"}


def generate(path: Path, n_cells: int, n_genes: int, n_perts: int, n_types: int,
             density: float, seed: int) -> dict:  # fmt: skip
    """Write the raw-count screen to ``path`` block by block; return its description."""
    rng = np.random.default_rng(seed)
    genes = np.array([f"G{i:05d}" for i in range(n_genes)])
    targets = rng.choice(n_genes, n_perts, replace=False)
    labels = np.array(["non-targeting", *genes[targets]])
    # ~8 % controls, the rest spread over the perturbations
    weights = np.r_[0.08, np.full(n_perts, 0.92 / n_perts)]
    pert = rng.choice(len(labels), n_cells, p=weights)
    celltype = rng.integers(0, n_types, n_cells)
    batch = rng.integers(0, 8, n_cells)
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical.from_codes(pert, labels),
            "cell_type": pd.Categorical.from_codes(celltype, [f"type{i}" for i in range(n_types)]),
            "batch": pd.Categorical.from_codes(batch, [f"b{i}" for i in range(8)]),
            "perturbation_type": "CRISPRi",
        },
        index=pd.Index([f"c{i}" for i in range(n_cells)]),
    )
    scale = np.exp(rng.normal(0.5, 0.8, n_genes)).astype(np.float32)  # per-gene level
    type_scale = np.exp(rng.normal(0, 0.3, (n_types, n_genes))).astype(np.float32)
    effect = np.ones((len(labels), n_genes), dtype=np.float32)
    target_of = np.r_[-1, targets]  # column of each label's target gene (none: -1)
    for k in range(1, len(labels)):
        shifted = rng.choice(n_genes, 40, replace=False)
        effect[k, shifted] *= np.exp(rng.normal(0, 0.7, 40)).astype(np.float32)
    started = time.perf_counter()
    ad.AnnData(obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(path)
    with h5py.File(path, "r+") as f:
        if "X" in f:  # written below, block by block
            del f["X"]
        writer = CSRAppender(f, "X", n_genes)
        for lo in range(0, n_cells, BLOCK_ROWS):
            hi = min(lo + BLOCK_ROWS, n_cells)
            u = rng.random((hi - lo, n_genes), dtype=np.float32)
            rows, cols = np.nonzero(u < density)
            on_target = cols == target_of[pert[lo + rows]]  # the knockdown: target silenced
            rows, cols = rows[~on_target], cols[~on_target]
            mean = scale[cols] * type_scale[celltype[lo + rows], cols]
            mean *= effect[pert[lo + rows], cols]
            values = rng.poisson(mean).astype(np.float32) + 1.0  # a stored value is >= 1
            block = np.zeros((hi - lo, n_genes), dtype=np.float32)
            block[rows, cols] = values
            writer.append(block)
        writer.close()
    return {"cells": n_cells, "genes": n_genes, "perturbations": n_perts, "cell_types": n_types,
            "density": density, "nnz": int(writer.nnz), "bytes": path.stat().st_size,
            "generate_s": round(time.perf_counter() - started, 1)}  # fmt: skip


def write_conf(
    conf: Path, screen: Path, out_root: Path, steps: int, labels: list[str], out_of_core: str
) -> None:
    """conf/base plus a ``scale`` environment reading ``screen`` and writing under out_root."""
    if conf.exists():
        shutil.rmtree(conf)
    shutil.copytree(ROOT / "conf" / "base", conf / "base")
    env = conf / "scale"
    env.mkdir(parents=True)
    (env / "globals.yml").write_text(yaml.safe_dump({"output_root": str(out_root)}))
    catalog = {"raw_adata": {"type": "perturbflow.datasets.H5adCellsDataset",
                             "filepath": str(screen)}}  # fmt: skip
    (env / "catalog.yml").write_text(yaml.safe_dump(catalog))
    test, val = labels[:20], labels[20:30]
    params = {
        "columns": {"pert_col": "perturbation", "celltype_col": "cell_type",
                    "batch_col": "batch", "control_label": "non-targeting",
                    "dataset_col": None, "dataset_name": "synthetic"},
        "preprocessing": {"expected_input": "counts", "n_top_genes": 2000,
                          "out_of_core": out_of_core,
                          "knockdown": {"enabled": True, "type_col": "perturbation_type",
                                        "knockdown_types": ["CRISPRi"]}},
        "splits": {"splits": {"zeroshot": None, "fewshot": {
            "toml": None, "training": {}, "zeroshot": {},
            "fewshot": {"synthetic.type0": {"val": val, "test": test}}}}},
        "loader": {"memory_budget_mib": 1024},
        "training": {"splits": ["fewshot"], "max_steps": steps, "val_every_n_steps": steps,
                     "ckpt_every_n_steps": steps, "progress_bar": False, "cpu_threads": 1},
        "evaluation": {"ceiling": False},
    }  # fmt: skip
    (env / "parameters.yml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_step(pipeline: str, conf: Path, log: Path) -> dict:
    """``kedro run`` one pipeline; its wall time and the peak RSS of its process tree."""
    command = [str(Path(sys.executable).with_name("kedro")), "run", "--conf-source", str(conf),
               "--env", "scale", "--pipelines", PIPELINES.get(pipeline, pipeline)]  # fmt: skip
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        parent, peak, peak_anon = psutil.Process(proc.pid), 0, 0
        while proc.poll() is None:
            try:
                tree = [parent, *parent.children(recursive=True)]
                info = [p.memory_info() for p in tree if p.is_running()]
                peak = max(peak, sum(i.rss for i in info))
                # rss less its file-backed pages (memory-mapped h5ad data the kernel can drop)
                peak_anon = max(peak_anon, sum(i.rss - i.shared for i in info))
            except psutil.Error:
                pass
            time.sleep(0.2)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{pipeline} failed (rc {proc.returncode}); see {log}")
    return {
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(peak / 2**20, 1),
        "peak_anon_mib": round(peak_anon / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", type=int, default=[1_000_000, 2_000_000])
    parser.add_argument("--genes", type=int, default=8000)
    parser.add_argument("--perturbations", type=int, default=400)
    parser.add_argument("--celltypes", type=int, default=3)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/scale"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--out-of-core", default="auto", choices=["auto", "always", "never"])
    parser.add_argument("--only", nargs="+", choices=STEPS, help="rerun these steps on a kept run")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"sizes": {}}
    for n in args.cells:
        work = args.work_dir / f"{n}x{args.genes}"
        work.mkdir(parents=True, exist_ok=True)
        screen = work / "screen.h5ad"
        sidecar = work / "screen.json"
        if not (screen.is_file() and sidecar.is_file()):
            info = generate(screen, n, args.genes, args.perturbations, args.celltypes,
                            args.density, args.seed)  # fmt: skip
            sidecar.write_text(json.dumps(info))
        info = json.loads(sidecar.read_text())
        print(f"{n} cells: {info}", flush=True)
        obs = ad.io.read_elem(h5py.File(screen)["obs"])
        labels = sorted(set(obs["perturbation"].astype(str)) - {"non-targeting"})
        conf, out_root = work / "conf", work / "data"
        steps = dict(results["sizes"].get(str(n), {}).get("steps", {})) if args.only else {}
        if not args.only:  # a fresh run; --only reruns steps on the outputs of an earlier one
            shutil.rmtree(out_root, ignore_errors=True)
        write_conf(conf, screen, out_root, args.steps, labels, args.out_of_core)
        for step in args.only or STEPS:
            steps[step] = run_step(step, conf, work / f"{step}.log")
            print(f"  {step}: {steps[step]}", flush=True)
        run = json.loads((out_root / "06_models/st/fewshot/run.json").read_text())
        if "training" in steps:
            steps["training"]["train_cells_per_s"] = run["train_cells_per_s"]
        if "preprocessing" in steps:
            output = out_root / "02_intermediate/preprocessed.h5ad"
            steps["preprocessing"]["output_bytes"] = output.stat().st_size
        ordered = {k: steps[k] for k in STEPS if k in steps}
        results["sizes"][str(n)] = {"screen": info, "steps": ordered}
        results["machine"] = {
            "cpus": os.cpu_count(),
            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
        }
        results["command"] = "python benchmarks/scale.py " + " ".join(sys.argv[1:])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        if not (args.keep or args.only):
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
