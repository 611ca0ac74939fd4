"""The ST model's validation pearson_delta pooled over the benchmarks' splits, per configuration.

``benchmarks/st_quality.py`` and ``benchmarks/st_kfold.py`` record, per split (or fold) and
seed, the validation figure the ``perturbflow`` predictor chose on (``perturbflow_selection``:
the mean pearson_delta over the split's validation perturbations of ``st_seed<s>`` and of
the baselines). This pools them over the validation keys of every split a configuration
was run on (each split weighted by its number of validation perturbations), per seed, so
two configurations trained on the same splits can be compared on validation only: the
figure a default is chosen on. The test figures of the same files are never read.

Usage (from the project root):
    python benchmarks/validation_pooled.py \\
        --config "1x1000=docs/results/st_quality.json,data/08_reporting/kfold_1x1000/*.json" \\
        --config "2x700=docs/results/st_quality_2x700.json,data/08_reporting/kfold_2x700/*.json" \\
        --out docs/results/validation_pooled.json
"""

from __future__ import annotations

import argparse
import glob
import json
import re
from pathlib import Path

import pandas as pd


def validation_rows(path: Path) -> list[dict]:
    """One row per split (fold) and seed of a result file: the st validation figure."""
    payload = json.loads(path.read_text())
    argv = " ".join(payload.get("argv", [])) or payload.get("command", "")
    fold_seed = re.search(r"--fold-seed[ =](\d+)", argv)
    rows = []
    for result in payload["results"]:
        name = f"{result['env']}:{result['split']}"
        if "fold" in result:
            name = f"kfold{result['fold']}" + (f"s{fold_seed.group(1)}" if fold_seed else "")
        for seed, table in result["perturbflow_selection"].items():
            st = [r for r in table if r["predictor"] == f"st_seed{seed}"]
            if st and st[0]["n_validation"]:
                rows.append(
                    {
                        "set": name,
                        "seed": int(seed),
                        "n_validation": st[0]["n_validation"],
                        "st": st[0]["validation_pearson_delta"],
                    }
                )
    return rows


def pooled(frame: pd.DataFrame) -> dict:
    """Per seed: the mean over validation keys of every set; then mean and sd over seeds."""
    weighted = frame.assign(w=frame["st"] * frame["n_validation"])
    sums = weighted.groupby("seed")[["w", "n_validation"]].sum()
    per_seed = (sums["w"] / sums["n_validation"]).round(4)
    return {
        "per_seed": {str(k): float(v) for k, v in per_seed.items()},
        "mean": round(float(per_seed.mean()), 4),
        "sd": round(float(per_seed.std(ddof=1)), 4) if len(per_seed) > 1 else None,
        "n_keys_per_seed": int(sums["n_validation"].iloc[0]),
        "per_set_mean_over_seeds": frame.groupby("set")["st"].mean().round(4).to_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True, help="NAME=GLOB[,GLOB...]")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    out = {}
    for spec in args.config:
        name, patterns = spec.split("=", 1)
        paths = sorted({Path(p) for pat in patterns.split(",") for p in glob.glob(pat)})
        if not paths:
            raise SystemExit(f"{name}: no file matches {patterns!r}")
        frame = pd.DataFrame([r for p in paths for r in validation_rows(p)])
        out[name] = {"files": [str(p) for p in paths], **pooled(frame)}
        print(f"{name}: {out[name]['mean']} ± {out[name]['sd']} per seed {out[name]['per_seed']}")
    sets = pd.DataFrame({n: v["per_set_mean_over_seeds"] for n, v in out.items()})
    print(sets.round(3))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
