"""The run directory: everything a trained ST model is, as files a user can read and share.

```
<run>/
  config.yaml             resolved configuration (columns, loader, training, architecture, data)
  genes.json              ordered names of the input/output space (all_genes.json for ``all``)
  perturbation_map.json   perturbation labels of the split -> index (CategoryMap)
  context_map.json        dataset.celltype contexts -> index
  batch_map.json          batches -> index (only with a batch column)
  perturbation_inputs.json + training_effects.npz   what the perturbation encoder reads
  checkpoints/            step=N.ckpt every N steps (the newest keep_step_checkpoints),
                          last.ckpt, best.ckpt (resume only)
  logs/metrics.csv        the CSV logger (or TensorBoard event files)
  model.pt                the weights used for inference (a state dict)
  run.json                status, steps, wall time, throughput, best validation score
```

Nothing here is a pickle: JSON, YAML, npz without objects, and state dicts read with
``torch.load(weights_only=True)``. Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from perturbflow.exceptions import InputError
from perturbflow.io_utils import atomic_path, load_tensors
from perturbflow.models.components.inputs import PerturbationInputs
from perturbflow.models.components.network import Architecture, StateTransitionNet

CONFIG = "config.yaml"
WEIGHTS = "model.pt"
SUMMARY = "run.json"
CHECKPOINTS = "checkpoints"


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, naming it when it is missing or malformed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such file.") from err
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err}).") from err


def write_yaml(path: str | os.PathLike[str], data: Any) -> None:
    """Write YAML atomically (block style, key order kept)."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping (a run's configuration), naming the file when it is broken."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise InputError(f"{path}: no such file.") from err
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({err}).") from err
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of settings, got {type(data).__name__}.")
    return data


def config_digest(config: dict[str, Any]) -> str:
    """sha256 of a configuration's canonical JSON (what decides whether a run is reusable)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def save_weights(net: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Save a state dict (tensors only) atomically."""
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)


@dataclass
class TrainedRun:
    """A trained ST model read back from its run directory.

    Attributes:
        path: The run directory.
        config: The resolved configuration (``config.yaml``).
        net: The network, in eval mode, weights loaded.
        inputs: The perturbation-input encoder.
        genes: Names of the model's expression space, in its column order.
        all_genes: Names of the all-gene space (``output_space='all'``), else ``None``.
        summary: ``run.json``.
    """

    path: Path
    config: dict[str, Any]
    net: StateTransitionNet
    inputs: PerturbationInputs
    genes: list[str]
    all_genes: list[str] | None
    summary: dict[str, Any]

    @property
    def cell_set_len(self) -> int:
        """Cells per sentence the model was trained on."""
        return int(self.config["loader"]["cell_set_len"])

    @property
    def digest(self) -> str:
        """The identity of this run (sha256 of its configuration)."""
        return str(self.summary.get("config_sha256", config_digest(self.config)))


def load_run(path: str | os.PathLike[str], *, device: str = "cpu") -> TrainedRun:
    """Read a finished run directory.

    Args:
        path: The run directory (written by :func:`perturbflow.models.training.train.train_st`).
        device: Where to put the network.

    Raises:
        InputError: Not a run directory, an unfinished run, or files that do not match.
    """
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise InputError(f"{path} is not an ST run directory (no {CONFIG}).")
    if not (path / WEIGHTS).is_file():
        raise InputError(
            f"{path} has no {WEIGHTS}: the training has not finished (rerun it to resume "
            f"from {CHECKPOINTS}/last.ckpt)."
        )
    config = read_yaml(path / CONFIG)
    arch = Architecture(**config["architecture"])
    net = StateTransitionNet(arch)
    state = load_tensors(
        path / WEIGHTS,
        what="the model's weights (a state dict)",
        fix=f"retrain: move {path} aside and rerun the training, or restore the file",
    )
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(f"{path / WEIGHTS} does not match {path / CONFIG}: {err}") from err
    net.to(device).eval()
    inputs = PerturbationInputs.load(path)
    genes = [str(g) for g in read_json(path / "genes.json")]
    all_path = path / "all_genes.json"
    all_genes = [str(g) for g in read_json(all_path)] if all_path.is_file() else None
    summary = read_json(path / SUMMARY) if (path / SUMMARY).is_file() else {}
    if arch.input_dim != len(genes):
        raise InputError(f"{path}: genes.json has {len(genes)} names, the model {arch.input_dim}.")
    return TrainedRun(path, config, net, inputs, genes, all_genes, summary)
