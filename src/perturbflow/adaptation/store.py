"""The adapter on disk: a state dict plus JSON, bound to the run it was fitted for.

```
<adapter_dir>/
  shift.pt       the adapter's state dict (shift, log_scale), torch.load(weights_only=True)
  adapter.json   kind, gene names, the base run's digest and path, the fit's parameters,
                 bandwidths, MMD before/after, the MMD curve, source and target files
```

An adapter only means something for the network whose basal encoder it was fitted
through: loading it against a run with another digest or other genes is an error.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from perturbflow.adaptation.config import ShiftFitParams
from perturbflow.adaptation.shift import GeneShift, ShiftFit
from perturbflow.exceptions import InputError
from perturbflow.io_utils import atomic_path, load_tensors
from perturbflow.models.runs.run_dir import TrainedRun, read_json, write_json

WEIGHTS = "shift.pt"
META = "adapter.json"
FORMAT = 1


def adapter_metadata(
    fit: ShiftFit, run: TrainedRun, params: ShiftFitParams, **extra: Any
) -> dict[str, Any]:
    """What ``adapter.json`` records (also the pipeline's ``adaptation_summary``)."""
    return {
        "format": FORMAT,
        "kind": fit.adapter.kind,
        "run_digest": run.digest,
        "run_dir": str(run.path),
        "genes": list(run.genes),
        "fit_params": dataclasses.asdict(params),
        "bandwidths": fit.bandwidths,
        "mmd2_before": fit.mmd_before,
        "mmd2_after": fit.mmd_after,
        "best_step": fit.best_step,
        "steps": fit.steps,
        "stopped_early": fit.stopped_early,
        "n_target_controls": fit.n_target,
        "n_source_embeddings": fit.n_source,
        "shift_rms": float(fit.adapter.shift.detach().pow(2).mean().sqrt()),
        "curve": fit.curve.to_dict(orient="records"),
        **extra,
    }


def save_adapter(path: str | os.PathLike[str], fit: ShiftFit, meta: dict[str, Any]) -> Path:
    """Write ``shift.pt`` and ``adapter.json`` atomically into ``path``; returns ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / WEIGHTS) as tmp:
        torch.save({k: v.detach().cpu() for k, v in fit.adapter.state_dict().items()}, tmp)
    write_json(path / META, meta)
    return path


def load_adapter(path: str | os.PathLike[str], run: TrainedRun) -> tuple[GeneShift, dict]:
    """Read an adapter fitted for ``run``.

    Raises:
        InputError: Missing files, an adapter fitted for another run (digest) or other
            genes, or weights that do not match the recorded kind.
    """
    path = Path(path)
    meta = read_json(path / META)
    if meta.get("run_digest") != run.digest:
        raise InputError(
            f"{path} was fitted for run {meta.get('run_dir')!r} (digest "
            f"{str(meta.get('run_digest'))[:12]}), not for {run.path} (digest "
            f"{run.digest[:12]}): an adapter is only valid for the network it was fitted "
            "through; fit it again for this run."
        )
    if list(meta.get("genes", [])) != list(run.genes):
        raise InputError(f"{path}: the adapter's genes are not the run's genes ({run.path}).")
    state = load_tensors(
        path / WEIGHTS,
        what="the MMD shift's weights (a state dict)",
        fix=f"rerun the adaptation that wrote {path}, or restore the file",
    )
    adapter = GeneShift(len(run.genes), scale=meta.get("kind") == "shift_scale")
    try:
        adapter.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(f"{path / WEIGHTS} does not match {path / META}: {err}") from err
    return adapter.requires_grad_(False), meta
