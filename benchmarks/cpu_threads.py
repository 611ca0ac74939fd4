"""Training throughput against `training.cpu_threads`, on an idle and on a busy machine.

Usage (from the project root, after `kedro run --pipelines preprocessing` and `--pipeline
splits`):
    python benchmarks/cpu_threads.py --out docs/results/cpu_threads.json \
        [--threads 1 2 0] [--burners 0 1] [--steps 60] [--repeats 2]

For each number of busy-loop processes (`--burners`: 0 is an idle machine, 1 keeps one of the
two cores busy, as another job on the machine would) and each thread setting (0 stands for
`null`, torch's default of one thread per core), trains the default ST model of the few-shot
split for `--steps` steps through `perturbflow train` in a fresh process and reads the
throughput it measured (`train_cells_per_s` of run.json: cells per second of training steps
after 5 warm-up steps, validation excluded). Settings are interleaved and repeated so that a
change of the machine's load hits all of them alike. `OMP_NUM_THREADS` is unset for the runs:
the setting under test decides.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _burn(stop: mp.Event) -> None:  # a CPU-bound process, as another job would be
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def _train(threads: int, steps: int, run: Path) -> dict:
    value = "null" if threads == 0 else str(threads)
    params = (
        f"training.max_steps={steps},training.val_every_n_steps={steps},"
        f"training.ckpt_every_n_steps={steps},training.cpu_threads={value}"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["KEDRO_DISABLE_TELEMETRY"] = "1"
    started = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "perturbflow",
            "train",
            "--split",
            "fewshot",
            "--run",
            str(run),
            "--params",
            params,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-2000:])
    summary = json.loads((run / "run.json").read_text())
    return {
        "cells_per_s": summary["train_cells_per_s"],
        "fit_s": summary["fit_wall_seconds"],
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2, 0])
    parser.add_argument("--burners", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for burners in args.burners:
            stop = mp.Event()
            procs = [mp.Process(target=_burn, args=(stop,), daemon=True) for _ in range(burners)]
            for p in procs:
                p.start()
            try:
                for repeat in range(args.repeats):
                    for threads in args.threads:
                        run = Path(tmp) / f"b{burners}-t{threads}-r{repeat}"
                        row = {
                            "burners": burners,
                            "threads": threads or None,
                            "repeat": repeat,
                            **_train(threads, args.steps, run),
                        }
                        print(json.dumps(row), flush=True)
                        rows.append(row)
            finally:
                stop.set()
                for p in procs:
                    p.join()
    summary = {}
    for burners in args.burners:
        for threads in args.threads:
            got = [
                r["cells_per_s"]
                for r in rows
                if r["burners"] == burners and r["threads"] == (threads or None)
            ]
            summary[f"burners={burners} threads={threads or 'null'}"] = {
                "median_cells_per_s": sorted(got)[len(got) // 2],
                "runs": got,
            }
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "steps": args.steps,
        "load_average_at_start": os.getloadavg(),
        "summary": summary,
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for key, value in summary.items():
        print(f"{key:28s} {value['median_cells_per_s']:>10.0f} cells/s  {value['runs']}")


if __name__ == "__main__":
    main()
