"""Time the default `kedro run` and record its metrics.

Usage (from the project root, in the project's environment):
    python benchmarks/default_run.py --out data/08_reporting/benchmark_default_run.json \
        [--env ENV] [--repeats N]

Runs `kedro run` as a subprocess N times, measures wall time and the peak RSS of the
run (children's max RSS), and writes them with the resulting metrics table as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--env", default=None, help="kedro conf environment")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    kedro = Path(sys.executable).with_name("kedro")
    command = [str(kedro), "run"] + (["--env", args.env] if args.env else [])
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    walls = []
    for i in range(args.repeats):
        started = time.perf_counter()
        subprocess.run(
            command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        walls.append(time.perf_counter() - started)
        print(f"run {i + 1}/{args.repeats}: {walls[-1]:.1f} s", flush=True)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    root = "data/runs/" + args.env if args.env and args.env not in ("local", "base") else "data"
    metrics = pd.read_csv(Path(root) / "08_reporting" / "metrics.csv")
    result = {
        "command": " ".join(["kedro", "run"] + (["--env", args.env] if args.env else [])),
        "wall_seconds": [round(w, 2) for w in walls],
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "metrics": metrics.round(4).to_dict(orient="records"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "metrics"}, indent=2))


if __name__ == "__main__":
    main()
