"""An MMD shift on disk: a state dict plus JSON, bound to the run it was fitted for.

```
<shift folder>/
  shift.pt     the shift's state dict (shift, log_scale), torch.load(weights_only=True)
  shift.json   kind, gene names, the run's digest and path, the fit's parameters,
               bandwidths, MMD before/after, the MMD curve, source and target files
```

A shift only means something for the network whose basal encoder it was fitted through:
using it with a run of another digest or other genes is an error
(:meth:`MMDShift.check_run`). Folders written before the rename hold ``adapter.json``
instead of ``shift.json``; they are read as well.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from perturbflow.adaptation.config import ShiftFitParams
from perturbflow.adaptation.shift import GeneShift, ShiftFit
from perturbflow.exceptions import InputError
from perturbflow.io_utils import atomic_path, load_tensors
from perturbflow.models.runs.run_dir import TrainedRun, read_json, write_json

WEIGHTS = "shift.pt"
META = "shift.json"
_OLD_META = "adapter.json"  # the name before the MMD shift stopped being called an adapter
FORMAT = 1


@dataclass
class MMDShift:
    """A fitted per-gene shift and what it was fitted for.

    Attributes:
        shift: The shift (frozen).
        meta: What ``shift.json`` records (:func:`shift_metadata`).
        path: The folder it was read from (``None`` for one not yet saved).
    """

    shift: GeneShift
    meta: dict[str, Any]
    path: Path | None = None

    def check_run(self, run: TrainedRun) -> GeneShift:
        """The shift, after checking it was fitted through ``run``'s network.

        Raises:
            InputError: Fitted for another run (digest) or other genes.
        """
        where = self.path or "The shift"
        if self.meta.get("run_digest") != run.digest:
            raise InputError(
                f"{where} was fitted for run {self.meta.get('run_dir')!r} (digest "
                f"{str(self.meta.get('run_digest'))[:12]}), not for {run.path} (digest "
                f"{run.digest[:12]}): a shift is only valid for the network it was fitted "
                "through; fit it again for this run."
            )
        if list(self.meta.get("genes", [])) != list(run.genes):
            raise InputError(f"{where}: the shift's genes are not the run's genes ({run.path}).")
        return self.shift


def shift_metadata(
    fit: ShiftFit, run: TrainedRun, params: ShiftFitParams, **extra: Any
) -> dict[str, Any]:
    """What ``shift.json`` records (also the pipeline's ``adaptation_summary``)."""
    return {
        "format": FORMAT,
        "kind": fit.shift.kind,
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
        "shift_rms": float(fit.shift.shift.detach().pow(2).mean().sqrt()),
        "curve": fit.curve.to_dict(orient="records"),
        **extra,
    }


def write_shift(path: str | os.PathLike[str], shift: MMDShift) -> Path:
    """Write ``shift.pt`` and ``shift.json`` (each atomically) into ``path``; returns it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / WEIGHTS) as tmp:
        torch.save({k: v.detach().cpu() for k, v in shift.shift.state_dict().items()}, tmp)
    write_json(path / META, shift.meta)
    return path


def read_shift(path: str | os.PathLike[str]) -> MMDShift:
    """Read a shift folder (not yet checked against a run: :meth:`MMDShift.check_run`).

    Raises:
        InputError: Missing files, or weights that do not match the recorded kind.
    """
    path = Path(path)
    meta_path = path / META if (path / META).is_file() else path / _OLD_META
    if not meta_path.is_file():
        raise InputError(f"{path} is not an MMD shift folder (no {META}).")
    meta = read_json(meta_path)
    state = load_tensors(
        path / WEIGHTS,
        what="the MMD shift's weights (a state dict)",
        fix=f"rerun the adaptation that wrote {path}, or restore the file",
    )
    shift = GeneShift(len(meta.get("genes", [])), scale=meta.get("kind") == "shift_scale")
    try:
        shift.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(f"{path / WEIGHTS} does not match {meta_path}: {err}") from err
    return MMDShift(shift.requires_grad_(False), meta, path)


def load_shift(path: str | os.PathLike[str], run: TrainedRun) -> tuple[GeneShift, dict]:
    """Read a shift fitted for ``run`` (:func:`read_shift`, then checked against ``run``)."""
    stored = read_shift(path)
    return stored.check_run(run), stored.meta
