"""Train Arc Institute's STATE (arc-state 0.11.1) on our held-out splits and score it with ours.

For each split (``<env>:<split>``: the devel ``fewshot`` and ``zeroshot`` splits and the
Papalexi held-out targets, whose column in the Papalexi split table is also ``fewshot``):

1. write what STATE trains on from our Kedro outputs (``preprocessed.h5ad``, ``hvg_genes.json``,
   ``splits.parquet``): one h5ad per dataset (STATE takes contexts as ``dataset.celltype`` with
   the dataset named in the TOML; our devel TOMLs point both datasets at one merged file, which
   cell-load would read twice), holding the HVG matrix in ``obsm['X_hvg']`` (and in ``X``), and a
   STATE/cell-load TOML equivalent to the split table (``[zeroshot]`` for a context held out
   whole, ``[fewshot."dataset.celltype"]`` lists for held-out perturbations). The cell counts
   cell-load assigns to train/val/test are checked against the split table before training;
2. ``state tx train`` (``model=state_sm`` shrunk to a CPU size) under
   ``timeout --signal=INT <budget>``: STATE's Trainer exposes no ``max_time``, and an
   interrupted Lightning fit exits before STATE writes ``final.ckpt``, so the model scored is
   ``checkpoints/last.ckpt``, written every ``--val-freq`` steps (STATE ties its
   ``ModelCheckpoint`` to ``training.val_freq``; ``training.ckpt_every_n_steps`` is unused);
3. ``state tx infer`` on the held-out contexts' control cells, relabelled with each test
   perturbation (as many cells as the real test cells; STATE draws the basal cells from the
   context's controls); the predictions are assembled in the form of
   ``perturbflow.evaluation.cells.predicted_adata`` (real controls, then predicted cells);
4. score STATE and our ``perturbation_mean`` baseline with ``evaluate_predictions`` (cell-eval,
   profile minimal), and write metrics, steps, throughput and the per-gene std ratio to JSON.

Runs in the project's environment; STATE runs in its own venv as a subprocess::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 /work/main/.venv/bin/python benchmarks/arc_state.py \
        --project /tmp/state_bench/pf --work-dir /tmp/state_bench/runs \
        --state-bin /tmp/venv-state/bin/state --budget-s 300 --seeds 0 \
        --out docs/results/arc_state.json

``--project`` is a copy of this repository on which the ``preprocessing`` and ``splits``
pipelines have run (base and ``--env papalexi``); see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import yaml

logger = logging.getLogger("arc_state")

DESIGN = ("dataset", "celltype", "perturbation", "is_control")
METRICS = ("pearson_delta", "discrimination_score_l1", "mse", "overlap_at_N")
PERT_OBS = "target"  # obs columns of the files STATE reads
CELLTYPE_OBS = "cell_type"
CONTEXT_OBS = "context"
BATCH_OBS = "batch"
FIT_MARK = "About to call trainer.fit()"

# Run in STATE's venv: the train/val/test cells cell-load assigns for a TOML (its public API).
_COUNT_SNIPPET = """
import json, sys
import anndata as ad
from cell_load.data_modules import PerturbationDataModule
kw = json.loads(sys.argv[1])
dm = PerturbationDataModule(**kw)
dm.setup()
obs = {}
rows = []
for split, subsets in (("train", dm.train_datasets), ("val", dm.val_datasets),
                       ("test", dm.test_datasets)):
    for sub in subsets:
        path = str(sub.dataset.h5_path)
        if path not in obs:
            obs[path] = ad.read_h5ad(path, backed="r").obs
        o = obs[path].iloc[sorted(set(int(i) for i in sub.indices))]
        for (ctx, ctrl), n in o.groupby([o["context"], o["target"] == kw["control_pert"]],
                                        observed=True).size().items():
            rows.append({"split": split, "context": ctx, "is_control": bool(ctrl), "n": int(n)})
print("COUNTS=" + json.dumps(rows))
"""

_CKPT_SNIPPET = """
import sys, torch
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
n = sum(v.numel() for v in ckpt["state_dict"].values())
print("STEP=%d EPOCH=%d PARAMS=%d" % (ckpt["global_step"], ckpt["epoch"], n))
"""

_VERSIONS_SNIPPET = """
import json, platform
from importlib.metadata import version
print("VERSIONS=" + json.dumps({p: version(p) for p in
    ("arc-state", "cell-load", "torch", "lightning", "anndata", "numpy")}
    | {"python": platform.python_version()}))
"""


@dataclass(frozen=True)
class SplitSpec:
    """One benchmarked split: a Kedro environment and a column of its split table."""

    env: str
    split: str

    @property
    def label(self) -> str:
        """Name used in logs, run folders and the JSON (``devel/fewshot``...)."""
        return f"{'devel' if self.env == 'base' else self.env}/{self.split}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--project",
        type=Path,
        default=Path("/tmp/state_bench/pf"),
        help="copy of the repo where preprocessing + splits have run",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path("/tmp/state_bench/runs"),
        help="STATE inputs, run folders and predictions go here",
    )
    p.add_argument("--state-bin", type=Path, default=Path("/tmp/venv-state/bin/state"))
    p.add_argument(
        "--splits",
        nargs="+",
        default=["base:fewshot", "base:zeroshot", "papalexi:fewshot"],
        help="<kedro env>:<split column>",
    )
    p.add_argument(
        "--budget-s",
        type=int,
        default=300,
        help="wall-clock limit of each `state tx train` process",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument(
        "--val-freq",
        type=int,
        default=50,
        help="STATE validates and writes last.ckpt every this many steps",
    )
    p.add_argument("--hidden-dim", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=4, help="transformer (llama) layers")
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--cell-set-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of STATE")
    p.add_argument("--out", type=Path, default=Path("docs/results/arc_state.json"))
    return p.parse_args(argv)


# --------------------------------------------------------------------------- inputs


def _read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def load_conf(project: Path, env: str) -> tuple[dict, dict, Path]:
    """Columns and evaluation params (base merged with ``env``) and the env's output root.

    Args:
        project: Repository copy holding ``conf/``.
        env: Kedro environment (``base`` or e.g. ``papalexi``).

    Returns:
        The ``columns`` and ``evaluation`` parameter dicts and the output root folder.
    """
    base, conf = project / "conf" / "base", project / "conf" / env
    columns = dict(_read_yaml(base / "parameters.yml")["columns"])
    evaluation = dict(_read_yaml(base / "parameters_evaluation.yml")["evaluation"])
    root = _read_yaml(base / "globals.yml")["output_root"]
    if env != "base":
        columns |= _read_yaml(conf / "parameters.yml").get("columns", {})
        evaluation |= _read_yaml(conf / "parameters_evaluation.yml").get("evaluation", {})
        root = _read_yaml(conf / "globals.yml").get("output_root", root)
    return columns, evaluation, project / root


def state_toml(table: pd.DataFrame, split: str, files: dict[str, Path]) -> str:
    """A STATE/cell-load TOML equivalent to one split column of our split table.

    A context whose cells (controls included) all carry one held-out label becomes a
    ``[zeroshot]`` entry; a context with held-out perturbations beside training ones becomes
    a ``[fewshot."dataset.celltype"]`` table (its controls then train, as in our table).

    Args:
        table: Our per-cell split table.
        split: The split column.
        files: The h5ad file of each dataset.

    Returns:
        The TOML text.

    Raises:
        ValueError: If a perturbation is split across labels within a context, or a
            context mixes labels in a way the TOML cannot express.
    """
    lines = ["[datasets]"] + [f'{d} = "{p}"' for d, p in files.items()]
    lines += ["", "[training]"] + [f'{d} = "train"' for d in files]
    zeroshot, fewshot = {}, {}
    table = table.loc[table[split] != "unused"]
    for (dataset, ctx), rows in table.groupby(["dataset", "celltype"], observed=True):
        key = f"{dataset}.{ctx}"
        labels = set(rows[split].astype(str))
        if labels <= {"train"}:
            continue
        if len(labels) == 1:
            zeroshot[key] = labels.pop()
            continue
        if set(rows.loc[rows["is_control"], split].astype(str)) - {"train"}:
            raise ValueError(f"{key}: held-out controls beside training cells")
        perts = rows.loc[~rows["is_control"]].groupby("perturbation", observed=True)[split]
        per = perts.agg(lambda s: set(s.astype(str)))
        if (per.map(len) > 1).any():
            raise ValueError(f"{key}: a perturbation has cells with several labels")
        per = per.map(lambda s: next(iter(s)))
        fewshot[key] = {lab: sorted(per.index[per == lab]) for lab in ("val", "test")}
    if zeroshot:
        lines += ["", "[zeroshot]"] + [f'"{k}" = "{v}"' for k, v in zeroshot.items()]
    for key, lists in fewshot.items():
        lines += ["", f'[fewshot."{key}"]']
        lines += [f"{lab} = {json.dumps(lists[lab])}" for lab in ("val", "test") if lists[lab]]
    return "\n".join(lines) + "\n"


def zeroshot_test_contexts(cells: pd.DataFrame) -> list[str]:
    """Contexts whose every cell, controls included, is labelled ``test``."""
    labels = cells.groupby("context")["split"].agg(lambda x: set(x.astype(str)))
    return sorted(labels.index[labels.map(lambda s: s == {"test"})])


def write_state_inputs(
    data, table: pd.DataFrame, split: str, batch: pd.Series | None, control: str, out: Path
) -> tuple[Path, dict[str, Path]]:
    """One h5ad per dataset (HVG matrix in X and obsm['X_hvg']) plus the TOML.

    Args:
        data: Our ``SplitCells`` of the split.
        table: Our per-cell split table.
        split: The split column.
        batch: Batch label per cell (``None``: one batch).
        control: The control label.
        out: Folder to write to.

    Returns:
        The TOML path and the h5ad path of each dataset.
    """
    out.mkdir(parents=True, exist_ok=True)
    cells = data.cells
    label = table.loc[cells.index, split].astype(str).to_numpy()
    keep = label != "unused"
    # A context held out whole for test (our zero-shot test line) is left out of STATE's files:
    # cell-load would train on its controls ("observational data"), and `state tx train`
    # never reads test cells; the inference input is built from our data. Its TOML entry stays.
    for ctx in zeroshot_test_contexts(cells.assign(split=label)):
        keep &= (cells["context"] != ctx).to_numpy()
    files = {}
    for dataset in sorted(cells.loc[keep, "dataset"].unique()):
        rows = np.flatnonzero(keep & (cells["dataset"] == dataset).to_numpy())
        c = cells.iloc[rows]
        obs = pd.DataFrame(
            {
                PERT_OBS: np.where(c["is_control"], control, c["perturbation"]),
                CELLTYPE_OBS: c["celltype"].to_numpy(),
                CONTEXT_OBS: c["context"].to_numpy(),
                BATCH_OBS: batch.loc[c.index].astype(str).to_numpy() if batch is not None else "b0",
            },
            index=c.index.astype(str),
        ).astype("category")
        X = np.ascontiguousarray(data.X[rows], dtype=np.float32)
        a = ad.AnnData(X=X, obs=obs, obsm={"X_hvg": X.copy()})
        a.var_names = data.genes
        a.var["gene_name"] = list(data.genes)
        path = out / f"{dataset}.h5ad"
        a.write_h5ad(path)
        files[dataset] = path
    toml = out / f"{split}.toml"
    toml.write_text(state_toml(table, split, files))
    return toml, files


def expected_counts(data) -> pd.DataFrame:
    """Cells per (subset, context, is_control) that cell-load should build from our table.

    Perturbed cells go where our table puts them. Controls of a few-shot context (``train``
    in ours) are the basal pool of, and so are counted in, cell-load's train subset and every
    held-out subset of that context. Controls of a zero-shot val context are in cell-load's
    val subset and, by cell-load's design, also in train (they are not test data). A zero-shot
    test context is not in STATE's files (see :func:`write_state_inputs`).
    """
    c = data.cells.loc[data.cells["split"] != "unused"]
    c = c.loc[~c["context"].isin(zeroshot_test_contexts(c))]
    pert = c.loc[~c["is_control"]].groupby(["split", "context"]).size()
    rows = [
        {"split": s, "context": ctx, "is_control": False, "n": int(n)}
        for (s, ctx), n in pert.items()
    ]
    for ctx, ctrl in c.loc[c["is_control"]].groupby("context"):
        labels = set(ctrl["split"])
        subsets = {"train", "val"} if labels == {"val"} else set(pert.loc[:, ctx].index) | {"train"}
        rows += [{"split": s, "context": ctx, "is_control": True, "n": len(ctrl)} for s in subsets]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- STATE


def _state_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CELL_LOAD_H5_RDCC_NBYTES": "1048576",
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
            "WANDB_MODE": "disabled",
        }
    )
    return env


def _state_python(state_bin: Path) -> str:
    return str(state_bin.parent / "python")


def _run_snippet(state_bin: Path, code: str, args: list[str], threads: int, tag: str) -> str:
    res = subprocess.run(
        [_state_python(state_bin), "-c", code, *args],
        capture_output=True,
        text=True,
        env=_state_env(threads),
        check=False,
    )
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith(tag)), None)
    if res.returncode != 0 or line is None:
        raise RuntimeError(f"STATE venv snippet failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return line[len(tag) :]


def data_kwargs(toml: Path, control: str) -> dict:
    """The cell-load data-module settings shared by the count check and training."""
    return {
        "toml_config_path": str(toml),
        "embed_key": "X_hvg",
        "output_space": "gene",
        "pert_col": PERT_OBS,
        "cell_type_key": CELLTYPE_OBS,
        "batch_col": BATCH_OBS,
        "control_pert": control,
        "num_workers": 0,
        "pin_memory": False,
    }


def check_counts(args: argparse.Namespace, toml: Path, control: str, data) -> dict:
    """Compare the cells cell-load assigns to train/val/test with our split table.

    Args:
        args: Command line.
        toml: The STATE TOML.
        control: The control label.
        data: Our ``SplitCells`` of the split.

    Returns:
        The comparison table and the contexts left out of STATE's files.

    Raises:
        RuntimeError: If any count differs.
    """
    kw = data_kwargs(toml, control) | {
        "batch_size": args.batch_size,
        "cell_sentence_len": args.cell_set_len,
    }
    kw.pop("pin_memory")
    got = pd.DataFrame(
        json.loads(
            _run_snippet(args.state_bin, _COUNT_SNIPPET, [json.dumps(kw)], args.threads, "COUNTS=")
        )
    )
    want = expected_counts(data)
    keys = ["split", "context", "is_control"]
    merged = got.merge(want, on=keys, how="outer", suffixes=("_state", "_ours")).fillna(0)
    merged = merged.sort_values(keys).reset_index(drop=True)
    merged[["n_state", "n_ours"]] = merged[["n_state", "n_ours"]].astype(int)
    ok = bool((merged["n_state"] == merged["n_ours"]).all())
    logger.info(
        "cell-load vs split table (%s):\n%s",
        "match" if ok else "MISMATCH",
        merged.to_string(index=False),
    )
    if not ok:
        raise RuntimeError("STATE's train/val/test cells differ from our split table")
    c = data.cells.loc[data.cells["split"] != "unused"]
    excluded = {
        ctx: {
            "perturbed": int((~c.loc[c["context"] == ctx, "is_control"]).sum()),
            "control": int(c.loc[c["context"] == ctx, "is_control"].sum()),
        }
        for ctx in zeroshot_test_contexts(c)
    }
    if excluded:
        logger.info("zero-shot test contexts left out of STATE's files: %s", excluded)
    return {
        "match": ok,
        "rows": merged.to_dict(orient="records"),
        "zeroshot_test_contexts_not_in_state_files": excluded,
    }


def train_overrides(
    args: argparse.Namespace, toml: Path, control: str, run_root: Path, name: str, seed: int
) -> list[str]:
    """Hydra overrides of ``state tx train``."""
    head_dim = args.hidden_dim // args.n_heads
    tb = "model.kwargs.transformer_backbone_kwargs"
    ov = [
        f"data.kwargs.{k}={str(v).lower() if isinstance(v, bool) else v}"
        for k, v in data_kwargs(toml, control).items()
    ]
    return ov + [
        "model=state_sm",
        "model.device=cpu",
        f"model.kwargs.hidden_dim={args.hidden_dim}",
        f"model.kwargs.cell_set_len={args.cell_set_len}",
        f"{tb}.num_hidden_layers={args.n_layers}",
        f"{tb}.num_attention_heads={args.n_heads}",
        f"{tb}.num_key_value_heads={args.n_heads}",
        f"{tb}.head_dim={head_dim}",
        f"{tb}.intermediate_size={4 * args.hidden_dim}",
        f"training.batch_size={args.batch_size}",
        f"training.lr={args.lr}",
        "training.max_steps=10000000",
        f"training.val_freq={args.val_freq}",
        f"training.ckpt_every_n_steps={args.val_freq}",
        f"training.train_seed={seed}",
        "use_wandb=false",
        "wandb.tags=[]",
        f"output_dir={run_root}",
        f"name={name}",
        "overwrite=true",
    ]


def run_train(args: argparse.Namespace, overrides: list[str], log_path: Path) -> dict:
    """``timeout --signal=INT <budget> state tx train ...``; timestamps every output line.

    Args:
        args: Command line (budget, STATE binary, threads).
        overrides: Hydra overrides (:func:`train_overrides`).
        log_path: Where the timestamped output goes.

    Returns:
        Command, exit code (124 when the budget stopped it), wall seconds, and the second
        at which ``trainer.fit`` started.
    """
    cmd = [
        "timeout",
        "--signal=INT",
        "--kill-after=60",
        str(args.budget_s),
        str(args.state_bin),
        "tx",
        "train",
        *overrides,
    ]
    logger.info("%s", shlex.join(cmd))
    t0 = time.time()
    fit_at = None
    with (
        open(log_path, "w") as log,
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_state_env(args.threads)
        ) as proc,
    ):
        for raw in proc.stdout:
            now = time.time() - t0
            line = raw.decode(errors="replace").rstrip("\n")
            log.write(f"[{now:8.2f}] {line}\n")
            if fit_at is None and FIT_MARK in line:
                fit_at = now
        rc = proc.wait()
    wall = time.time() - t0
    return {"cmd": shlex.join(cmd), "rc": rc, "wall_s": wall, "fit_start_s": fit_at, "t0": t0}


def checkpoint_info(args: argparse.Namespace, run_dir: Path, train: dict) -> dict:
    """Steps in ``last.ckpt`` and the training throughput up to when it was written.

    Args:
        args: Command line.
        run_dir: STATE's run folder.
        train: Output of :func:`run_train`.

    Returns:
        Steps, epoch, parameter count, seconds and cells/s.

    Raises:
        RuntimeError: If no checkpoint was written within the budget.
    """
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.exists():
        raise RuntimeError(f"no checkpoint in {run_dir}: raise --budget-s or lower --val-freq")
    out = _run_snippet(args.state_bin, _CKPT_SNIPPET, [str(ckpt)], args.threads, "STEP=")
    m = re.match(r"(\d+) EPOCH=(\d+) PARAMS=(\d+)", out)
    steps, epoch, n_params = int(m.group(1)), int(m.group(2)), int(m.group(3))
    ckpt_s = ckpt.stat().st_mtime - train["t0"]
    train_s = ckpt_s - train["fit_start_s"]
    cells = steps * args.batch_size * args.cell_set_len
    return {
        "checkpoint": str(ckpt),
        "steps": steps,
        "n_parameters": n_params,
        "epoch": epoch,
        "checkpoint_written_s": ckpt_s,
        "training_s": train_s,
        "startup_s": train["fit_start_s"],
        "cells_per_s": cells / train_s if train_s > 0 else float("nan"),
        "note": "cells/s = steps x batch_size x cell_set_len (perturbed cells of the sentences)"
        " / (last.ckpt mtime - trainer.fit start); includes the validation passes",
    }


def infer_input(data, columns: dict, seed: int) -> tuple[ad.AnnData, list[tuple]]:
    """Held-out contexts' controls plus, per test perturbation, relabelled control copies.

    Args:
        data: Our ``SplitCells`` of the split.
        columns: The ``columns`` params.
        seed: Seed of the choice of control copies (STATE resamples the basal cells itself).

    Returns:
        The AnnData for ``state tx infer`` and the (context, perturbation, cells) blocks.
    """
    rng = np.random.default_rng(seed)
    rows, perts, names, blocks = [], [], [], []
    control = columns["control_label"]
    for ctx in data.heldout_contexts("test"):
        ctrl = data.control_rows(ctx)
        rows.append(ctrl)
        perts += [control] * len(ctrl)
        names += [f"ctrl:{n}" for n in data.cells.index[ctrl]]
        for pert in data.heldout_perturbations(ctx, "test"):
            n = len(data.perturbation_rows(ctx, pert, "test"))
            rows.append(rng.choice(ctrl, size=n, replace=n > len(ctrl)))
            perts += [pert] * n
            names += [f"pred:{ctx}:{pert}:{i}" for i in range(n)]
            blocks.append((ctx, pert, n))
    idx = np.concatenate(rows)
    cells = data.cells.iloc[idx]
    obs = pd.DataFrame(
        {
            PERT_OBS: perts,
            CELLTYPE_OBS: cells["celltype"].to_numpy(),
            CONTEXT_OBS: cells["context"].to_numpy(),
            "dataset": cells["dataset"].to_numpy(),
        },
        index=pd.Index(names),
    ).astype("category")
    X = np.ascontiguousarray(data.X[idx], dtype=np.float32)
    a = ad.AnnData(X=X, obs=obs, obsm={"X_hvg": X.copy()})
    a.var_names = data.genes
    return a, blocks


def run_infer(
    args: argparse.Namespace,
    run_dir: Path,
    ckpt: str,
    adata_in: Path,
    adata_out: Path,
    control: str,
    seed: int,
    log_path: Path,
) -> dict:
    """``state tx infer`` from control cells, grouped by context."""
    cmd = [
        str(args.state_bin),
        "tx",
        "infer",
        "--model-dir",
        str(run_dir),
        "--checkpoint",
        ckpt,
        "--adata",
        str(adata_in),
        "--embed-key",
        "X_hvg",
        "--pert-col",
        PERT_OBS,
        "--celltype-col",
        CONTEXT_OBS,
        "--control-pert",
        control,
        "--seed",
        str(seed),
        "--output",
        str(adata_out),
    ]
    logger.info("%s", shlex.join(cmd))
    t0 = time.time()
    res = subprocess.run(
        cmd, capture_output=True, text=True, env=_state_env(args.threads), check=False
    )
    log_path.write_text(res.stdout + "\n--- stderr ---\n" + res.stderr)
    if res.returncode != 0:
        raise RuntimeError(f"state tx infer failed ({res.returncode}); see {log_path}")
    return {"cmd": shlex.join(cmd), "wall_s": time.time() - t0}


def prediction_adata(data, infer_in: ad.AnnData, infer_out: Path, cols) -> ad.AnnData:
    """Our prediction form: real controls unchanged, then STATE's predicted cells.

    Args:
        data: Our ``SplitCells`` of the split.
        infer_in: The input given to ``state tx infer``.
        infer_out: Its output file (predictions in ``obsm['X_hvg']``).
        cols: ``ColumnsParams``.

    Returns:
        An AnnData in the form of ``perturbflow.evaluation.cells.predicted_adata``.

    Raises:
        RuntimeError: If STATE changed the cells or their order.
    """
    out = ad.read_h5ad(infer_out)
    if list(out.obs_names) != list(infer_in.obs_names):
        raise RuntimeError("state tx infer changed the cells or their order")
    pred = np.asarray(out.obsm["X_hvg"], dtype=np.float32)
    is_ctrl = infer_in.obs[PERT_OBS].astype(str).to_numpy() == cols.control_label
    X = np.where(is_ctrl[:, None], infer_in.obsm["X_hvg"], pred).astype(np.float32)
    o = infer_in.obs
    frame = {
        cols.pert_col: o[PERT_OBS].astype(str).to_numpy(),
        cols.celltype_col: o[CELLTYPE_OBS].astype(str).to_numpy(),
        "context": o[CONTEXT_OBS].astype(str).to_numpy(),
        (cols.dataset_col or "dataset"): o["dataset"].astype(str).to_numpy(),
    }
    obs = pd.DataFrame(frame, index=o.index.copy()).astype("category")
    res = ad.AnnData(X=X, obs=obs)
    res.var_names = data.genes
    return res


def std_ratio(pred: ad.AnnData, real: ad.AnnData, cols, min_expressed: float = 0.1) -> dict:
    """Per-gene spread of predicted vs real test cells, averaged over test perturbations.

    ``median_ratio`` is the mean over perturbations of the median over genes (with a real std
    above 0) of ``std_pred / std_real``. On sparse HVG data most of those genes are zero in
    nearly every cell, so two companions are reported: the same median over the genes
    expressed in at least ``min_expressed`` of the real cells, and ``sum_ratio``, the sum
    over genes of ``std_pred`` over the sum of ``std_real``.
    """
    per = {}
    for ctx in sorted(real.obs["context"].astype(str).unique()):
        r_ctx = real[real.obs["context"].astype(str).to_numpy() == ctx]
        p_ctx = pred[pred.obs["context"].astype(str).to_numpy() == ctx]
        for pert in sorted(set(r_ctx.obs[cols.pert_col].astype(str)) - {cols.control_label}):
            xr = np.asarray(r_ctx.X[r_ctx.obs[cols.pert_col].astype(str).to_numpy() == pert])
            xp = np.asarray(p_ctx.X[p_ctx.obs[cols.pert_col].astype(str).to_numpy() == pert])
            sr, sp = xr.std(axis=0), xp.std(axis=0)
            ok = sr > 0
            expressed = (xr > 0).mean(axis=0) >= min_expressed
            per[f"{ctx}/{pert}"] = {
                "median_ratio": float(np.median(sp[ok] / sr[ok])),
                "median_ratio_expressed": float(np.median(sp[expressed] / sr[expressed]))
                if expressed.any()
                else None,
                "sum_ratio": float(sp.sum() / sr.sum()),
                "n_genes_std_gt0": int(ok.sum()),
                "n_genes_expressed": int(expressed.sum()),
            }
    keys = ("median_ratio", "median_ratio_expressed", "sum_ratio")
    summary = {
        f"mean_{k}": float(np.mean([v[k] for v in per.values() if v[k] is not None])) for k in keys
    }
    return summary | {"min_expressed": min_expressed, "per_perturbation": per}


def training_curve(run_dir: Path, log_path: Path) -> dict:
    """Last train/val loss from STATE's CSV log and the parameter size it printed."""
    out: dict = {}
    csv = run_dir / "version_0" / "metrics.csv"
    if csv.exists():
        m = pd.read_csv(csv)
        for col in ("train_loss", "val_loss"):
            if col in m:
                rows = m.dropna(subset=[col])
                if len(rows):
                    out[f"last_{col}"] = float(rows[col].iloc[-1])
                    out[f"last_{col}_step"] = int(rows["step"].iloc[-1])
        if "val_loss" in m:
            v = m.dropna(subset=["val_loss"])
            out["val_loss_curve"] = [
                [int(a), float(b)] for a, b in zip(v["step"], v["val_loss"], strict=True)
            ]
    hit = re.search(r"Estimated params size: ([\d.]+) GB", log_path.read_text())
    if hit:
        out["params_size_gb_reported"] = float(hit.group(1))
    return out


# --------------------------------------------------------------------------- driver


def metric_row(agg: pd.DataFrame, predictor: str) -> dict:
    """The headline metrics (and the normalised score) of one predictor row."""
    row = agg.loc[agg["predictor"] == predictor].iloc[0]
    keys = [*METRICS, "score_vs_perturbation_mean", "n_perturbations"]
    return {k: (None if pd.isna(row[k]) else float(row[k])) for k in keys if k in row}


def bench_split(args: argparse.Namespace, spec: SplitSpec) -> dict:
    """Everything for one split: inputs, count check, per-seed train/infer/score.

    Args:
        args: Command line.
        spec: The split.

    Returns:
        The split's part of the JSON report.
    """
    from perturbflow.evaluation.benchmark import build_baseline_predictions, evaluate_predictions
    from perturbflow.params import ColumnsParams, EvaluationParams, LinearBaselineParams
    from perturbflow.splits.data import split_cells

    columns, evaluation, root = load_conf(args.project, spec.env)
    cols = ColumnsParams(**columns)
    evaluation.update(
        predictors=["perturbation_mean"],
        reference_predictor="perturbation_mean",
        profile="minimal",
        ceiling=False,
        num_threads=args.threads,
    )
    evaluation["linear"] = LinearBaselineParams(**evaluation["linear"])
    params = EvaluationParams(**evaluation)
    adata = ad.read_h5ad(root / "02_intermediate" / "preprocessed.h5ad")
    genes = json.loads((root / "02_intermediate" / "hvg_genes.json").read_text())
    table = pd.read_parquet(root / "03_primary" / "splits.parquet")
    table = table[[*DESIGN, spec.split]]
    data = split_cells(adata, table, spec.split, genes=genes, obsm_key="X_hvg")
    work = args.work_dir / spec.label.replace("/", "_")
    batch = adata.obs[cols.batch_col] if cols.batch_col else None
    toml, files = write_state_inputs(
        data, table, spec.split, batch, cols.control_label, work / "inputs"
    )
    logger.info("%s: TOML %s\n%s", spec.label, toml, toml.read_text())
    counts = check_counts(args, toml, cols.control_label, data)

    t0 = time.time()
    baseline, reals, *_ = build_baseline_predictions(adata, table, genes, cols, params)
    real = reals[spec.split]
    pm = baseline[f"{spec.split}/perturbation_mean"]
    baseline_s = time.time() - t0
    is_ctrl = real.obs[cols.pert_col].astype(str).to_numpy() == cols.control_label
    result = {
        "env": spec.env,
        "split": spec.split,
        "toml": toml.read_text(),
        "n_test_perturbations": int(
            real.obs.loc[~is_ctrl].groupby(["context", cols.pert_col], observed=True).ngroups
        ),
        "n_test_cells": int((~is_ctrl).sum()),
        "cell_counts_check": counts,
        "perturbation_mean": {},
        "state": {},
        "perturbation_mean_build_s": baseline_s,
    }
    for seed in args.seeds:
        name = f"seed{seed}"
        run_root = work / "state_runs"
        run_dir = run_root / name
        train = run_train(
            args,
            train_overrides(args, toml, cols.control_label, run_root, name, seed),
            work / f"train_{name}.log",
        )
        ck = checkpoint_info(args, run_dir, train)
        logger.info(
            "%s seed %d: rc %s, %.0f s wall, %d steps, %.0f cells/s",
            spec.label,
            seed,
            train["rc"],
            train["wall_s"],
            ck["steps"],
            ck["cells_per_s"],
        )
        infer_in, _ = infer_input(data, columns, seed)
        in_path, out_path = work / f"infer_in_{name}.h5ad", work / f"infer_out_{name}.h5ad"
        infer_in.write_h5ad(in_path)
        inf = run_infer(
            args,
            run_dir,
            ck["checkpoint"],
            in_path,
            out_path,
            cols.control_label,
            seed,
            work / f"infer_{name}.log",
        )
        pred = prediction_adata(data, infer_in, out_path, cols)
        pred.write_h5ad(work / f"prediction_{name}.h5ad")
        t1 = time.time()
        agg, per = evaluate_predictions(
            {f"{spec.split}/state": pred, f"{spec.split}/perturbation_mean": pm},
            {spec.split: real},
            cols,
            params,
        )
        per.to_csv(work / f"per_perturbation_{name}.csv", index=False)
        logger.info(
            "%s seed %d:\n%s",
            spec.label,
            seed,
            agg[["predictor", *[m for m in METRICS if m in agg]]].to_string(index=False),
        )
        result["state"][name] = {
            "metrics": metric_row(agg, "state"),
            "train": {k: v for k, v in train.items() if k != "t0"},
            "checkpoint": ck,
            "infer": inf,
            "std_ratio_pred_over_real": std_ratio(pred, real, cols),
            "training_curve": training_curve(run_dir, work / f"train_{name}.log"),
            "scoring_s": time.time() - t1,
            "run_dir": str(run_dir),
        }
        if not result["perturbation_mean"]:
            result["perturbation_mean"] = {
                "metrics": metric_row(agg, "perturbation_mean"),
                "std_ratio_pred_over_real": std_ratio(pm, real, cols),
            }
    return result


def machine() -> dict:
    """CPU model, core count, memory and OS of this machine."""
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        (
            int(ln.split()[1]) // 1024
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        ),
        None,
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_mib": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the JSON."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    specs = [SplitSpec(*s.split(":", 1)) for s in args.splits]
    versions = json.loads(_run_snippet(args.state_bin, _VERSIONS_SNIPPET, [], 1, "VERSIONS="))
    report = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "versions": {
            "state_venv": versions,
            "project": {p: version(p) for p in ("perturbflow", "cell-eval", "anndata", "numpy")},
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "state_model": {
            "model": "state_sm",
            "hidden_dim": args.hidden_dim,
            "transformer_layers": args.n_layers,
            "heads": args.n_heads,
            "intermediate_size": 4 * args.hidden_dim,
            "cell_set_len": args.cell_set_len,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "threads": args.threads,
            "stop": f"timeout --signal=INT {args.budget_s} (wall clock of `state tx train`)",
        },
        "splits": {},
    }
    for spec in specs:
        logger.info("=== %s ===", spec.label)
        report["splits"][spec.label] = bench_split(args, spec)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
