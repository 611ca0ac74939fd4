"""A finetuned run directory: the adapter, the identity of its base run, and how to use it.

```
<finetuned run>/
  adapter_config.json    method, LoRA settings and resolved target modules, new identity
                         slots, the extended architecture, the base run's path and digest
  adapter.pt             the trained tensors only (LoRA A/B + new slots; everything for full
                         finetuning), a state dict read with torch.load(weights_only=True)
  finetune.yaml          resolved finetuning configuration (what decides reuse / resume)
  genes.json, perturbation_map.json, context_map.json
  perturbation_inputs.json + training_effects.npz   the extended perturbation encoder
  perturbation_sources.csv, checkpoints/, logs/metrics.csv, run.json
```

:func:`load_finetuned` rebuilds the base network, applies the adapter and merges it into a
plain :class:`~perturbflow.models.components.network.StateTransitionNet` (LoRA folded into the
weights, new slots into the first encoder layer), returned as a
:class:`~perturbflow.models.runs.run_dir.TrainedRun` for
:func:`~perturbflow.models.inference.predict.predict_cells`. :func:`merge_adapter` writes that as a
standalone run directory that :func:`~perturbflow.models.runs.run_dir.load_run` reads without
the base.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from perturbflow.exceptions import InputError
from perturbflow.io_utils import atomic_path, load_tensors
from perturbflow.models.components.inputs import PerturbationInputs
from perturbflow.models.components.lora import add_lora, lora_config, merge_network, with_slots
from perturbflow.models.components.network import Architecture
from perturbflow.models.runs.run_dir import (
    CONFIG,
    SUMMARY,
    WEIGHTS,
    TrainedRun,
    config_digest,
    load_run,
    read_json,
    read_yaml,
    save_weights,
    write_json,
    write_yaml,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.pt"
FINETUNE_CONFIG = "finetune.yaml"
ADAPTER_FORMAT = "perturbflow.STAdapter"


def save_adapter(run: Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``adapter.pt`` (tensors only) and ``adapter_config.json``."""
    with atomic_path(run / ADAPTER_WEIGHTS) as tmp:
        torch.save(state, tmp)
    write_json(run / ADAPTER_CONFIG, meta)


def read_adapter_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``adapter_config.json`` of a finetuned run.

    Raises:
        InputError: Not a finetuned run, or one that has not finished.
    """
    path = Path(run_dir)
    if not (path / ADAPTER_CONFIG).is_file():
        hint = (
            " (it is a standalone run: use models.run_dir.load_run)"
            if (path / WEIGHTS).is_file()
            else ""
        )
        raise InputError(f"{path} is not a finetuned run: no {ADAPTER_CONFIG}{hint}.")
    meta = read_json(path / ADAPTER_CONFIG)
    if meta.get("format") != ADAPTER_FORMAT:
        raise InputError(f"{path / ADAPTER_CONFIG}: format is not {ADAPTER_FORMAT}.")
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise InputError(
            f"{path} has no {ADAPTER_WEIGHTS}: the finetuning has not finished (rerun it to "
            "resume from checkpoints/last.ckpt)."
        )
    return meta


def check_base(meta: dict[str, Any], base: TrainedRun, run_dir: str | os.PathLike[str]) -> None:
    """The base run must be the one the adapter was trained on (same digest).

    Raises:
        InputError: Naming both runs and both digests.
    """
    expected = meta["base"]["digest"]
    if base.digest != expected:
        raise InputError(
            f"{run_dir} was finetuned from base run {meta['base']['path']} (digest "
            f"{expected[:12]}...), but {base.path} has digest {base.digest[:12]}...: a "
            "different run. Pass the base run it was trained on (or retrain the adapter)."
        )


def finetuned_config(base: TrainedRun, meta: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The configuration of the merged model: the base's, with the finetuning's changes."""
    config = copy.deepcopy(base.config)
    finetune = read_yaml(run_dir / FINETUNE_CONFIG)
    config["architecture"] = dict(meta["architecture"])
    config["loader"] = finetune["loader"]
    config["split"] = finetune["split"]
    config["finetuned"] = {
        "base_path": meta["base"]["path"],
        "base_digest": meta["base"]["digest"],
        "method": meta["method"],
        "config_sha256": meta["config_sha256"],
    }
    return config


def rebuild_network(base: TrainedRun, meta: dict[str, Any], state: dict[str, torch.Tensor]):
    """The finetuned network with its adapter merged (a plain ``StateTransitionNet``).

    Raises:
        InputError: Adapter tensors that do not fit the base network.
    """
    arch = Architecture(**meta["architecture"])
    net = with_slots(base.net, meta["n_base_identity"], len(meta["new_vocabulary"]))
    lora = None
    if meta["method"] == "lora":
        settings = meta["lora"]
        config = lora_config(
            net,
            targets=settings["targets"],
            rank=settings["rank"],
            alpha=settings["alpha"],
            dropout=settings["dropout"],
            basal_rank=settings["basal_rank"],
        )
        lora = add_lora(net, config)
    own = net.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise InputError(
            f"The adapter does not fit the base network: {len(bad)} tensor(s) such as "
            f"{bad[:3]} have no place of that shape in it."
        )
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value)
    return merge_network(net, lora, arch)


def load_finetuned(
    run_dir: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> TrainedRun:
    """Read a finetuned run for inference (plugs into ``predict_cells``).

    Args:
        run_dir: The finetuned run directory (written by
            :func:`perturbflow.models.training.finetune.finetune_st`).
        base: The base run directory; default the path recorded in the adapter.
        device: Where to put the network.

    Returns:
        A :class:`TrainedRun` whose network has the adapter merged in and whose inputs
        know the new identity slots.

    Raises:
        InputError: Not a finetuned run, a missing base run, or a base run with another
            digest than the one the adapter was trained on.
    """
    path = Path(run_dir)
    meta = read_adapter_config(path)
    base_path = Path(base) if base is not None else Path(meta["base"]["path"])
    if not (base_path / CONFIG).is_file():
        raise InputError(
            f"{path}: its base run {base_path} is not there (recorded path "
            f"{meta['base']['path']}); pass base= the base run directory."
        )
    base_run = load_run(base_path)
    check_base(meta, base_run, path)
    state = load_tensors(
        path / ADAPTER_WEIGHTS,
        what="the adapter's weights (a state dict)",
        fix=f"rerun the finetuning that wrote {path}, or restore the file",
    )
    net = rebuild_network(base_run, meta, state).to(device).eval()
    inputs = PerturbationInputs.load(path)
    config = finetuned_config(base_run, meta, path)
    summary = read_json(path / SUMMARY) if (path / SUMMARY).is_file() else {}
    return TrainedRun(path, config, net, inputs, base_run.genes, base_run.all_genes, summary)


def merge_adapter(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a finetuned run as a standalone run directory (no base needed to load it).

    Args:
        run_dir: The finetuned run directory.
        out_dir: Where the standalone run goes (must not hold another run).
        base: The base run directory; default the path recorded in the adapter.

    Returns:
        ``out_dir``, loadable with :func:`perturbflow.models.runs.run_dir.load_run`.

    Raises:
        InputError: As :func:`load_finetuned`, or ``out_dir`` already holds files.
    """
    run = load_finetuned(run_dir, base=base)
    base_path = Path(base) if base is not None else Path(run.config["finetuned"]["base_path"])
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} is not empty: merge into a new directory.")
    out.mkdir(parents=True, exist_ok=True)
    src = Path(run_dir)
    write_yaml(out / CONFIG, run.config)
    write_json(out / "genes.json", run.genes)
    if run.all_genes is not None:
        write_json(out / "all_genes.json", run.all_genes)
    for name in ("perturbation_map.json", "context_map.json", "perturbation_sources.csv"):
        if (src / name).is_file():
            shutil.copy(src / name, out / name)
    batch_map = base_path / "batch_map.json"
    if batch_map.is_file():
        shutil.copy(batch_map, out / "batch_map.json")
    run.inputs.save(out)
    save_weights(run.net, out / WEIGHTS)
    summary = {
        **run.summary,
        "status": "finished",
        "config_sha256": config_digest(run.config),
        "merged_from": str(src),
    }
    write_json(out / SUMMARY, summary)
    return out
