"""Dose handling of the ST model on a generated drug screen with a known Hill response.

No real drug screen ships with the project, so this measures what the dose encoding,
plate pairing and dose-interpolation augmentation do on generated data whose answer is
known (``tests/synthetic.py::make_drug_screen``: three drugs, a Hill curve per drug on its
own genes, three plates with plate offsets, one cell line). The middle dose (1 uM) of every
drug is held out; the model also predicts doses never in the screen (0.03 ... 30 uM).

Usage (from the project root; 48 fits of about 8 s each, 6 to 8 minutes on one CPU thread):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/drug_doses.py \
        --out docs/results/drug_doses.json --plot docs/results/drug_doses.png [--seeds 0 1 2]

Configurations: ``log`` (identity + log-dose block, plate pairing), ``log+interp<rate>`` (the same
with dose interpolation at rate 0.5 or 1), ``none`` (doses dropped), ``label`` (each dosed label
its own identity: the held-out dose is unknown and predicted as the average response),
``log/random`` (log dose, but controls paired at random across plates).
For each: held-out dose pearson_delta with the truth, |predicted| / |true| delta, whether the
held-out magnitude lies between its neighbours' predictions, the delta MSE on the trained
doses, and per-plate pearson_delta of the held-out dose predicted from each plate's controls
against the real cells of that plate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the generator lives with the tests' fixtures

from tests.drugs.support import EC50, HELD_OUT, input_params  # noqa: E402
from tests.models.support import loader_params, make_split, training_params  # noqa: E402
from tests.synthetic import (  # noqa: E402
    DRUG_COLUMNS,
    dose_label,
    drug_split_table,
    hill,
    make_drug_screen,
)

from perturbflow.models.inference.plates import predict_per_plate  # noqa: E402
from perturbflow.models.inference.predict import predict_cells  # noqa: E402
from perturbflow.models.runs.run_dir import load_run  # noqa: E402
from perturbflow.models.training.train import train_st  # noqa: E402

GRIDS = {
    "decades": [0.01, 0.1, 1.0, 10.0, 100.0],
    "half-log": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0],
}
CURVE = [float(f"{d:.3g}") for d in np.logspace(-2, 2, 17)]  # quarter-log steps
CONFIGS = {
    "log": {"dose": "log", "pairing": "batch"},
    "log+interp0.5": {"dose": "log", "pairing": "batch", "dose_interpolation": 0.5},
    "log+interp1": {"dose": "log", "pairing": "batch", "dose_interpolation": 1.0},
    "none": {"dose": "none", "pairing": "batch"},
    "label": {"dose": "label", "pairing": "batch"},
    "log/random": {"dose": "log", "pairing": "random"},
    # each drug on its own plate: only plate pairing gives unbiased deltas
    "log@confounded": {"dose": "log", "pairing": "batch", "confounded": True},
    "log/random@confounded": {"dose": "log", "pairing": "random", "confounded": True},
}
CONTEXT = "ds.K562"


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def run_config(name: str, grid: str, seed: int, work: Path, steps: int) -> dict:
    """Train one configuration on the screen of ``seed`` and measure it."""
    cfg = CONFIGS[name]
    doses = GRIDS[grid]
    confounded = cfg.get("confounded", False)
    adata, truth = make_drug_screen(EC50, doses, seed=seed, confounded=confounded)
    path = work / f"screen_{grid}_{seed}{'_confounded' if confounded else ''}.h5ad"
    if not path.exists():
        adata.write_h5ad(path)
    held = {("K562", dose_label(d, HELD_OUT)): "test" for d in EC50}
    table = drug_split_table(adata, {"doses": held}, control_label="DMSO")
    split = make_split(adata, path, table, "doses")
    params = training_params(cpu_threads=1, max_steps=steps, val_every_n_steps=steps)
    inputs = input_params(cfg["dose"], cfg.get("dose_interpolation", 0.0))
    params = dataclasses.replace(
        params, seed=seed, splits=["doses"], model=dataclasses.replace(params.model, inputs=inputs)
    )
    run_dir = work / f"{name.replace('/', '_')}_{grid}_{seed}"
    started = time.perf_counter()
    train_st(
        split,
        columns=DRUG_COLUMNS,
        loader=loader_params(pairing=cfg["pairing"], include_control_sentences=False, seed=seed),
        training=params,
        run_dir=run_dir,
    )
    wall = time.perf_counter() - started
    run, data = load_run(run_dir), split.data
    labels = sorted({dose_label(d, x) for d in EC50 for x in CURVE + doses})
    pred = predict_cells(
        run, data, {(CONTEXT, p): 36 for p in labels}, seed=seed, allow_unknown=True
    )
    ctrl = data.X[data.control_rows(CONTEXT)].mean(axis=0)
    delta = {p: pred.cells[(CONTEXT, p)].mean(axis=0) - ctrl for p in labels}
    i = doses.index(HELD_OUT)
    held_r, ratio, between, curve = [], [], [], {}
    for drug, ec50 in EC50.items():
        mid, lo, hi = (dose_label(drug, doses[j]) for j in (i, i - 1, i + 1))
        real = truth[("K562", mid)]
        held_r.append(_pearson(delta[mid], real))
        ratio.append(float(np.linalg.norm(delta[mid]) / np.linalg.norm(real)))
        norms = [np.linalg.norm(delta[p]) for p in (lo, mid, hi)]
        between.append(bool(norms[0] < norms[1] < norms[2]))
        direction = truth[("K562", dose_label(drug, 100.0))] / hill(100.0, ec50)
        unit = direction / np.linalg.norm(direction) ** 2
        curve[drug] = {
            "dose": CURVE,
            "predicted": [float(delta[dose_label(drug, x)] @ unit) for x in CURVE],
            "true": [hill(x, ec50) for x in CURVE],
        }
    unseen = [j for j, x in enumerate(CURVE) if x not in doses or x == HELD_OUT]
    curve_mae = float(
        np.mean([abs(c["predicted"][j] - c["true"][j]) for c in curve.values() for j in unseen])
    )
    trained = [dose_label(d, x) for d in EC50 for x in doses if x != HELD_OUT]
    mse = float(np.mean([np.mean((delta[p] - truth[("K562", p)]) ** 2) for p in trained]))
    plates = adata.obs["plate"].to_numpy()
    is_ctrl = data.cells["is_control"].to_numpy()
    pert = data.cells["perturbation"].to_numpy()
    mids = [dose_label(d, HELD_OUT) for d in EC50]
    on_plate = {(CONTEXT, pl, p): 12 for p in mids for pl in np.unique(plates[pert == p])}
    per_plate = predict_per_plate(run, data, plates, on_plate, seed=seed, allow_unknown=True)
    plate_r = []
    for (_, pl, p), cells in per_plate.items():
        real = data.X[(pert == p) & (plates == pl)].mean(axis=0)
        base = data.X[is_ctrl & (plates == pl)].mean(axis=0)
        plate_r.append(_pearson(cells.mean(axis=0) - base, real - base))
    return {
        "config": name,
        "grid": grid,
        "seed": seed,
        "fit_seconds": round(wall, 1),
        "held_out_pearson_delta": float(np.mean(held_r)),
        "held_out_magnitude_ratio": float(np.mean(ratio)),
        "held_out_between_neighbours": float(np.mean(between)),
        "trained_dose_delta_mse": mse,
        "unseen_dose_response_mae": curve_mae,
        "per_plate_pearson_delta": float(np.mean(plate_r)),
        "curve": curve,
    }


def summarise(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Mean and sd over seeds of each metric per configuration."""
    metrics = [k for k in rows[0] if k not in ("config", "grid", "seed", "curve")]
    out = {}
    for grid in GRIDS:
        for name in CONFIGS:
            sel = [r for r in rows if r["config"] == name and r["grid"] == grid]
            if sel:
                out[f"{grid}/{name}"] = {
                    m: [float(np.mean([r[m] for r in sel])), float(np.std([r[m] for r in sel]))]
                    for m in metrics
                }
    return out


def plot(rows: list[dict], path: Path) -> None:
    """Predicted vs true dose-response of every drug (first seed), a row per dose grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = [g for g in GRIDS if any(r["grid"] == g for r in rows)]
    fig, axes = plt.subplots(
        len(grids), len(EC50), figsize=(4 * len(EC50), 3.2 * len(grids)), sharey=True
    )
    axes = np.atleast_2d(axes)
    for row, grid in zip(axes, grids, strict=True):
        first = [r for r in rows if r["seed"] == rows[0]["seed"] and r["grid"] == grid]
        for ax, drug in zip(row, EC50, strict=True):
            truth = first[0]["curve"][drug]
            ax.plot(truth["dose"], truth["true"], "k-", lw=2, label="true (Hill)")
            for r in first:
                if r["config"] in ("log", "log+interp1", "none", "label"):
                    c = r["curve"][drug]
                    ax.plot(c["dose"], c["predicted"], "o--", ms=3, label=r["config"])
            for d in GRIDS[grid]:
                ax.axvline(d, color="grey", ls="-" if d != HELD_OUT else ":", lw=0.4)
            ax.axvline(HELD_OUT, color="red", ls=":", lw=1)
            ax.set_xscale("log")
            ax.set_title(f"{drug} (EC50 {EC50[drug]} uM), {grid} doses", fontsize=9)
        row[0].set_ylabel("response along the drug's direction")
    for ax in axes[-1]:
        ax.set_xlabel("dose (uM); grey: trained, red: held out")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def report(r: dict) -> None:
    """Print one run's figures."""
    print(
        f"{r['grid']:8s} {r['config']:11s} seed {r['seed']}: "
        f"held-out r {r['held_out_pearson_delta']:.3f} "
        f"|pred|/|true| {r['held_out_magnitude_ratio']:.2f} "
        f"between {r['held_out_between_neighbours']:.2f} "
        f"trained MSE {r['trained_dose_delta_mse']:.4f} "
        f"unseen MAE {r['unseen_dose_response_mae']:.3f} "
        f"plate r {r['per_plate_pearson_delta']:.3f} ({r['fit_seconds']} s)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--grids", nargs="+", default=list(GRIDS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for grid in args.grids:
                for name in args.configs:
                    rows.append(run_config(name, grid, seed, Path(tmp), args.steps))
                    report(rows[-1])
    summary = summarise(rows)
    result = {
        "command": " ".join(["benchmarks/drug_doses.py", *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, torch threads 1",
        "steps": args.steps,
        "seeds": args.seeds,
        "summary": summary,
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        "| config | held-out r | |pred|/|true| | between | trained MSE | unseen MAE | per-plate r |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        cells = [
            f"{s[m][0]:.3f} ± {s[m][1]:.3f}"
            for m in (
                "held_out_pearson_delta",
                "held_out_magnitude_ratio",
                "held_out_between_neighbours",
                "trained_dose_delta_mse",
                "unseen_dose_response_mae",
                "per_plate_pearson_delta",
            )
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.plot is not None:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
