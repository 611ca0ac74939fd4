"""LoRA (through peft) and new identity slots on a trained :class:`StateTransitionNet`.

Three things a finetuning needs from the network, none of which knows about Lightning:

* **Target groups** (:data:`TARGET_GROUPS`): friendly names of the module groups that get a
  LoRA adapter, resolved to the network's module names. ``attention`` adapts each layer's
  ``nn.MultiheadAttention`` (peft's LoRA for it covers the q/k/v in-projection and the
  out-projection), ``mlp`` the feed-forward ``linear1``/``linear2``, ``perturbation_encoder``
  and ``basal_encoder`` the Linear layers of the two encoders, ``output_head`` and
  ``decoder`` the output layers (off by default: seed 004 adapted the output projection and
  lost pearson_delta), ``direct_path`` the linear perturbation-to-delta path when the base
  has one.
* **New identity slots** (:class:`SlotLinear`): a perturbation component the base run never
  trained gets a new identity column. The first layer of the perturbation encoder is
  wrapped so that the base columns go through the base (frozen, possibly LoRA-adapted)
  layer and the new columns through a new zero-initialised layer that always trains: at
  step 0 the finetuned network predicts exactly what the base predicts.
* **Merging** (:func:`merge_network`): LoRA folded into the weights (peft's
  ``merge_and_unload``) and the slot layer folded into one plain Linear, giving a plain
  :class:`StateTransitionNet` with a wider perturbation input, loadable as a standalone run.

PyTorch's ``nn.TransformerEncoderLayer`` has an inference fast path (eval mode, no grad)
that reads ``linear1.weight``, ``self_attn.in_proj_weight`` ... directly and so bypasses a
LoRA adapter silently; :func:`disable_fast_path` attaches a no-op forward pre-hook to each
layer, which is one of the documented conditions that switch the fast path off. Merged
networks do not need it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraModel
from torch import nn

from perturbflow.exceptions import InputError
from perturbflow.models.components.network import Architecture, StateTransitionNet

ADAPTER_NAME = "default"
TARGET_GROUPS = (
    "attention",
    "mlp",
    "perturbation_encoder",
    "basal_encoder",
    "output_head",
    "decoder",
    "direct_path",
)


class SlotLinear(nn.Module):
    """The perturbation encoder's first layer with new identity columns beside the base ones.

    An input vector is laid out ``[base identity | new identity | the base's other parts]``
    (the extended vocabulary appends the new components after the base ones). The base
    columns go through ``base`` (the trained layer), the new ones through ``new``, a
    bias-free layer initialised at zero.

    Args:
        base: The trained first layer (``Linear(P_base, H)``).
        n_base_identity: Identity columns of the base vocabulary (where the new ones go).
        n_new: New identity columns.
    """

    def __init__(self, base: nn.Linear, n_base_identity: int, n_new: int) -> None:
        super().__init__()
        self.base = base
        self.n_base_identity = int(n_base_identity)
        self.n_new = int(n_new)
        self.new = nn.Linear(self.n_new, base.out_features, bias=False)
        nn.init.zeros_(self.new.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., P_base + n_new] -> [..., H]``."""
        a, b = self.n_base_identity, self.n_base_identity + self.n_new
        base_part = torch.cat([x[..., :a], x[..., b:]], dim=-1)
        return self.base(base_part) + self.new(x[..., a:b])

    def folded(self) -> nn.Linear:
        """One plain ``Linear(P_base + n_new, H)`` computing the same function."""
        base = self.base
        has_bias = base.bias is not None
        out = nn.Linear(base.in_features + self.n_new, base.out_features, bias=has_bias)
        a = self.n_base_identity
        with torch.no_grad():
            w = base.weight.detach()
            out.weight.copy_(torch.cat([w[:, :a], self.new.weight.detach(), w[:, a:]], dim=1))
            if has_bias:
                out.bias.copy_(base.bias.detach())
        return out


def _linear_names(net: nn.Module, prefix: str) -> list[str]:
    # the new slots of a SlotLinear (``.new``) always train in full: never a LoRA target
    return [
        n
        for n, m in net.named_modules()
        if n.startswith(prefix) and type(m) is nn.Linear and not n.endswith(".new")
    ]


def group_modules(net: StateTransitionNet, group: str) -> list[str]:
    """Module names of one target group in ``net`` (empty when the net lacks it).

    Raises:
        InputError: An unknown group name (listing the valid ones).
    """
    if group not in TARGET_GROUPS:
        raise InputError(
            f"Unknown LoRA target {group!r} (finetuning.lora.targets); valid targets: "
            f"{list(TARGET_GROUPS)}."
        )
    layers = [f"transformer.encoder.layers.{i}" for i in range(len(net.transformer.encoder.layers))]
    if group == "attention":
        return [f"{layer}.self_attn" for layer in layers]
    if group == "mlp":
        return [f"{layer}.{lin}" for layer in layers for lin in ("linear1", "linear2")]
    if group == "perturbation_encoder":
        return _linear_names(net, "pert_encoder.")
    if group == "basal_encoder":
        return _linear_names(net, "basal_encoder.")
    if group == "output_head":
        return _linear_names(net, "output_head.")
    if group == "direct_path":
        return _linear_names(net, "direct")  # direct, direct_all (their base under slots)
    return _linear_names(net, "decoder.") if net.decoder is not None else []


def check_targets(targets: Sequence[str]) -> None:
    """Fail on unknown or missing target names before any work.

    Raises:
        InputError: An empty list or an unknown name (listing the valid ones).
    """
    if not targets:
        raise InputError(
            f"finetuning.lora.targets is empty: name at least one of {list(TARGET_GROUPS)}."
        )
    unknown = [t for t in targets if t not in TARGET_GROUPS]
    if unknown:
        raise InputError(
            f"Unknown LoRA target(s) {unknown} (finetuning.lora.targets); valid targets: "
            f"{list(TARGET_GROUPS)}."
        )


def lora_config(
    net: StateTransitionNet,
    *,
    targets: Sequence[str],
    rank: int,
    alpha: float,
    dropout: float,
    basal_rank: int | None,
) -> LoraConfig:
    """The peft ``LoraConfig`` of ``targets`` on ``net`` (exact module names).

    ``net`` is the network LoRA goes into (after :func:`with_slots`: the wrapped base
    layer ``pert_encoder.0.base`` is a target, the new slots are not).

    The basal encoder gets ``basal_rank`` (when set) with the same scaling ``alpha / rank``
    as the other targets (seed 004's table: rank 8 / alpha 1 and rank 4 / alpha 0.5).

    Raises:
        InputError: Unknown targets, targets the network does not have, or a rank < 1.
    """
    check_targets(targets)
    if rank < 1 or (basal_rank is not None and basal_rank < 1):
        raise InputError("finetuning.lora.rank and basal_rank must be >= 1.")
    names: list[str] = []
    for group in dict.fromkeys(targets):
        found = group_modules(net, group)
        if not found:
            raise InputError(f"LoRA target {group!r}: the base network has no such module.")
        names += found
    rank_pattern, alpha_pattern = {}, {}
    if basal_rank is not None:
        for name in names:
            if name.startswith("basal_encoder."):
                rank_pattern[f"^{re.escape(name)}$"] = int(basal_rank)
                alpha_pattern[f"^{re.escape(name)}$"] = float(alpha) * basal_rank / rank
    return LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha),
        lora_dropout=float(dropout),
        target_modules=names,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        bias="none",
    )


def with_slots(net: StateTransitionNet, n_base_identity: int, n_new: int) -> StateTransitionNet:
    """A deep copy of ``net`` that reads ``n_new`` more identity columns.

    The layers reading the perturbation vector (the encoder's first layer, and the direct
    paths when present) become :class:`SlotLinear` layers.
    """
    out = copy.deepcopy(net)
    if n_new:
        out.pert_encoder[0] = SlotLinear(out.pert_encoder[0], n_base_identity, n_new)
        for name in ("direct", "direct_all"):
            layer = getattr(out, name)
            if layer is not None:
                setattr(out, name, SlotLinear(layer, n_base_identity, n_new))
    return out


def _slot_layers(net: nn.Module) -> list[tuple[nn.Module, str | int]]:
    """(parent, attribute) of every :class:`SlotLinear` of a network."""
    found: list[tuple[nn.Module, str | int]] = []
    if isinstance(net.pert_encoder[0], SlotLinear):
        found.append((net.pert_encoder, 0))
    for name in ("direct", "direct_all"):
        if isinstance(getattr(net, name, None), SlotLinear):
            found.append((net, name))
    return found


def _get(parent: nn.Module, key: str | int) -> nn.Module:
    return parent[key] if isinstance(key, int) else getattr(parent, key)


def disable_fast_path(net: nn.Module) -> None:
    """Switch PyTorch's transformer fast path off, which would bypass LoRA (module doc)."""
    for layer in net.transformer.encoder.layers:
        layer.register_forward_pre_hook(_no_op)


def _no_op(module: nn.Module, args: tuple) -> None:
    return None


def add_lora(net: StateTransitionNet, config: LoraConfig) -> LoraModel:
    """Inject LoRA into ``net`` in place; only adapters and new slots train afterwards.

    Returns:
        peft's ``LoraModel`` holding ``net`` (for merging); ``net`` itself is modified.
    """
    model = LoraModel(net, config, ADAPTER_NAME)
    for parent, key in _slot_layers(net):  # did not exist in the base: always trained
        _get(parent, key).new.weight.requires_grad_(True)
    disable_fast_path(net)
    return model


def trainable_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors of a network (what an adapter file holds)."""
    return {n: p.detach().cpu().clone() for n, p in net.named_parameters() if p.requires_grad}


def merge_network(net: nn.Module, lora: LoraModel | None, arch: Architecture) -> StateTransitionNet:
    """A plain :class:`StateTransitionNet` of ``arch`` computing what ``net`` computes.

    Args:
        net: A finetuned network (with LoRA layers and/or a :class:`SlotLinear`).
        lora: The ``LoraModel`` that holds ``net``, or ``None`` (full finetuning).
        arch: The extended architecture (``perturbation_dim`` includes the new slots).
    """
    merged = lora.merge_and_unload() if lora is not None else net
    for parent, key in _slot_layers(merged):
        folded = _get(parent, key).folded()
        if isinstance(key, int):
            parent[key] = folded
        else:
            setattr(parent, key, folded)
    plain = StateTransitionNet(arch)
    state = {k: v for k, v in merged.state_dict().items()}
    plain.load_state_dict(state)
    return plain.eval()
