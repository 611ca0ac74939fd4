"""Which keys should a run trained without its prior predict at the prior? Chosen on validation.

``training.model.prior_scope`` decides, per ``(context, perturbation)``, between the network
and the run's response prior. Candidates scored here, all on already trained networks
(inference only):

* ``network``: no key at the prior; ``prior``: every key at it;
* ``any`` (scope ``out_of_context``): the keys none of whose components was trained in
  their context, in any perturbation; ``single`` / ``every``: ... none trained *as a
  single* / not every component trained as a single (:func:`out_of_context_keys`' rules);
* ``informed`` (scope ``informed``): ``any``'s keys whose prior has evidence of its own
  (not the context's average response), and combinations at the additive model of their
  components (:mod:`perturbflow.models.components.prior_scope`).

Per key and run: the pearson over genes of the network's and of the prior's predicted
mean delta against the real one (the figure the ``perturbflow`` predictor chooses on; a
key at its prior has exactly the mean ``max(control mean + prior delta, 0)``), for the
validation perturbations (what the default is chosen on) and the test ones (reported,
never chosen on). Runs read: ``benchmarks/st_kfold.py``'s
(``<work-dir>/fold<f>/base_fold_seed<s>``: 4 validation perturbations per fold; one
``--kfold FOLD_SEED:WORK_DIR`` per shuffle of the folds, default
``0:data/06_models/st_kfold``) and ``benchmarks/st_quality.py``'s
(``data/06_models/st_quality/<env>_<split>_seed<s>``); train them first with those scripts.
A run trained with any scope but ``all`` has the same network, so the candidates share it.

``ensemble`` (``training.ensemble: 3``): ``informed`` with the network's delta of a key
averaged over the three seeds' runs (what the product predicts with three networks, up to
the draw: the mean of their cells has the mean of their mean deltas, but here each run
predicts from its own seed's draw of control cells, the product from one draw for all),
scored per key against the per-key mean of the single runs' ``informed`` figures.

Usage (from the project root):
    python benchmarks/prior_rule.py --out docs/results/prior_rule.json \
        [--kfold 0:data/06_models/st_kfold --kfold 1:data/06_models/st_kfold_foldseed1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from st_kfold import fold_table  # noqa: E402  (a sibling script)
from st_quality import hvg_split, load_environment  # noqa: E402

from perturbflow.baselines import real_deltas  # noqa: E402
from perturbflow.baselines.linear import pearson  # noqa: E402
from perturbflow.models.components.prior_scope import (  # noqa: E402
    KNOWN_RULES,
    keys_at_prior,
    out_of_context_keys,
)
from perturbflow.models.inference.predict import predict_cells  # noqa: E402
from perturbflow.models.inference.priors import run_prior  # noqa: E402
from perturbflow.models.runs.run_dir import load_run  # noqa: E402
from perturbflow.predictions import shifted_mean_delta  # noqa: E402

CANDIDATES = ("network", *KNOWN_RULES, "informed", "prior")


def score_run(run_dir: Path, data, seed: int, label: str) -> tuple[list[dict], list[dict]]:
    """Per ``label`` key of one run: the network's and the prior's pearson, who takes it.

    Also, per key, the ``informed`` prediction's mean delta and the real one (the seeds'
    networks are averaged from them: ``ensemble``).
    """
    run = load_run(run_dir)
    keys = data.heldout_keys(label)
    if not keys:
        return [], []
    real = real_deltas(data, label)
    cells = predict_cells(run, data, keys, seed=seed, allow_unknown=True, network_only=True).cells
    prior = run_prior(run)
    prior_deltas, sources = prior.deltas(list(keys), data)
    effects, control = run.inputs.effects, run.inputs.control_label
    at_prior = {
        rule: out_of_context_keys(effects, list(keys), control, rule=rule) for rule in KNOWN_RULES
    }
    at_prior["informed"] = keys_at_prior(prior, "informed", effects, list(keys), data).anchored
    at_prior["network"], at_prior["prior"] = [False] * len(keys), [True] * len(keys)
    rows, deltas = [], []
    for row, key in enumerate(keys):
        ctrl = data.control_mean(key[0])
        network = cells[key].mean(axis=0) - ctrl
        at_prior_mean = shifted_mean_delta(ctrl, prior_deltas[row])  # the cells' mean delta
        scores = {
            "network": pearson(network, real[key]),
            "prior": pearson(at_prior_mean, real[key]),
        }
        informed = at_prior_mean if at_prior["informed"][row] else network
        deltas.append({"key": key, "informed": informed, "real": real[key]})
        rows.append(
            {
                "run": str(run_dir),
                "label": label,
                "seed": seed,
                "context": key[0],
                "perturbation": key[1],
                "prior_source": sources[row],
                **{f"{name}_score": value for name, value in scores.items()},
                **{
                    name: scores["prior"] if at_prior[name][row] else scores["network"]
                    for name in CANDIDATES
                },
                **{f"at_prior_{name}": bool(at_prior[name][row]) for name in CANDIDATES},
            }
        )
    return rows, deltas


def ensemble_scores(frame: pd.DataFrame, deltas: dict[tuple, list]) -> pd.DataFrame:
    """Per key: the mean over seeds of ``informed`` and the seeds' averaged prediction's score.

    Args:
        frame: The per-run rows.
        deltas: ``(set, label, context, perturbation)`` -> the seeds' ``score_run`` deltas.
    """
    single = frame.groupby(["set", "label", "context", "perturbation"])["informed"].mean()
    rows = []
    for (set_, label, context, pert), members in deltas.items():
        averaged = np.mean([m["informed"] for m in members], axis=0)
        rows.append(
            {
                "set": set_,
                "label": label,
                "context": context,
                "perturbation": pert,
                "seeds": len(members),
                "informed": single.loc[(set_, label, context, pert)],
                "ensemble": pearson(averaged, members[0]["real"]),
            }
        )
    return pd.DataFrame(rows)


class _Environments:
    """Each environment's preprocessed file, read once (the splits share it)."""

    def __init__(self) -> None:
        self._loaded: dict[str, tuple] = {}

    def split(self, env: str, split: str, table: pd.DataFrame | None = None):
        if env not in self._loaded:
            _, path, adata, env_table, genes = load_environment(env, [])
            self._loaded[env] = (path, adata, env_table, genes)
        path, adata, env_table, genes = self._loaded[env]
        return hvg_split(path, adata, env_table if table is None else table, split, genes).data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument(
        "--kfold",
        action="append",
        default=None,
        help="FOLD_SEED:WORK_DIR of a st_kfold.py run (default 0:data/06_models/st_kfold)",
    )
    parser.add_argument(
        "--splits", nargs="+", default=["base:fewshot", "base:zeroshot", "papalexi:fewshot"]
    )
    args = parser.parse_args()
    rows, deltas = [], {}
    environments = _Environments()

    def add(scored: tuple[list[dict], list[dict]], set_: str, label: str) -> None:
        run_rows, run_deltas = scored
        rows.extend({**r, "set": set_} for r in run_rows)
        for d in run_deltas:
            deltas.setdefault((set_, label, *d["key"]), []).append(d)

    base_table = pd.read_parquet("data/03_primary/splits.parquet")
    for spec in args.kfold or ["0:data/06_models/st_kfold"]:
        fold_seed, work = spec.split(":", 1)
        suffix = "" if int(fold_seed) == 0 else f"s{fold_seed}"
        for fold in args.folds:
            folds = fold_table(base_table, fold, 4, int(fold_seed))
            data = environments.split("base", "fold", folds)
            for seed in args.seeds:
                run_dir = Path(work) / f"fold{fold}" / f"base_fold_seed{seed}"
                for label in ("val", "test"):
                    add(score_run(run_dir, data, seed, label), f"kfold{fold}{suffix}", label)
    for name in args.splits:
        env, split = name.split(":")
        data = environments.split(env, split)
        for seed in args.seeds:
            run_dir = Path(f"data/06_models/st_quality/{env}_{split}_seed{seed}")
            for label in ("val", "test"):
                add(score_run(run_dir, data, seed, label), name, label)
    frame = pd.DataFrame(rows)
    ensembles = ensemble_scores(frame, deltas)
    candidates = list(CANDIDATES)
    per_key = frame.groupby(["label", "set", "perturbation"])[candidates].mean()
    summary = {
        "mean_over_keys_and_seeds": frame.groupby("label")[candidates].mean().round(4).to_dict(),
        "per_set": _flat(frame.groupby(["label", "set"])[candidates].mean()),
        "wins_over_any_per_key": {
            name: {
                label: int((per_key.loc[label, name] > per_key.loc[label, "any"] + 1e-9).sum())
                - int((per_key.loc[label, name] < per_key.loc[label, "any"] - 1e-9).sum())
                for label in ("val", "test")
            }
            for name in candidates
        },
        "ensemble_of_the_seeds": {
            "mean_over_keys": ensembles.groupby("label")[["informed", "ensemble"]]
            .mean()
            .round(4)
            .to_dict("index"),
            "per_set": _flat(ensembles.groupby(["label", "set"])[["informed", "ensemble"]].mean()),
            "keys_better_minus_worse": {
                label: int((g["ensemble"] > g["informed"] + 1e-9).sum())
                - int((g["ensemble"] < g["informed"] - 1e-9).sum())
                for label, g in ensembles.groupby("label")
            },
        },
    }
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(frame.groupby(["label", "set"])[candidates].mean().round(3))
        print(frame.groupby("label")[candidates].mean().round(3))
        print(ensembles.groupby(["label", "set"])[["informed", "ensemble"]].mean().round(3))
        print(ensembles.groupby("label")[["informed", "ensemble"]].mean().round(3))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "summary": summary,
                "rows": frame.round(4).to_dict("records"),
                "ensemble_rows": ensembles.round(4).to_dict("records"),
            },
            indent=1,
        )
    )


def _flat(frame: pd.DataFrame) -> dict:
    """``{"label/set": {candidate: value}}`` (JSON keys are strings)."""
    return {"/".join(map(str, i)): row.round(4).to_dict() for i, row in frame.iterrows()}


if __name__ == "__main__":
    main()
