"""Plain ``nn.Module`` parts of the ST model: MLPs, the set transformer, the encoders.

Nothing here knows about Lightning, AnnData or Kedro. The set transformer is a stack of
bidirectional self-attention layers over the ``cell_set_len`` cells of a sentence with
**no positional encoding**: permuting the cells of the input permutes the output the
same way (permutation equivariance), which is what a *set* of cells needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SIZES: dict[str, dict[str, int]] = {
    # cpu: the default run's size, trains in minutes on 2 cores
    "cpu": {"hidden_dim": 128, "n_layers": 4, "n_heads": 4},
    # STATE's presets (state_sm, state, state_lg)
    "sm": {"hidden_dim": 672, "n_layers": 4, "n_heads": 8},
    "default": {"hidden_dim": 768, "n_layers": 8, "n_heads": 12},
    "lg": {"hidden_dim": 1024, "n_layers": 12, "n_heads": 16},
}


@dataclass(frozen=True)
class Architecture:
    """Resolved sizes of an ST model (what a run directory records).

    Attributes:
        input_dim: Width of the expression space read (genes or embedding).
        output_dim: Width of the predicted space (the same space as the input).
        decoder_dim: Width of the all-gene space (``output_space='all'``), else 0.
        perturbation_dim: Width of the perturbation input vector.
        n_batches: Batch categories (0: no batch encoder).
        hidden_dim: Model width.
        n_layers: Transformer layers.
        n_heads: Attention heads.
        dropout: Dropout probability.
        predict_residual: Output = control input + predicted delta.
        direct_path: Add a linear map from the perturbation vector straight to the output
            delta, beside the transformer. With the identity part a multi-hot of the
            components, it makes ``A+B`` exactly the sum of ``A``'s and ``B``'s shifts (the
            additive model); the transformer adds what depends on the cells.
    """

    input_dim: int
    output_dim: int
    decoder_dim: int
    perturbation_dim: int
    n_batches: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    dropout: float
    predict_residual: bool
    direct_path: bool = False


def resolve_size(
    size: str, *, hidden_dim: int | None, n_layers: int | None, n_heads: int | None
) -> dict[str, int]:
    """Sizes of a preset with explicit overrides.

    Raises:
        ValueError: Unknown preset, or a hidden width the heads do not divide.
    """
    if size not in SIZES:
        raise ValueError(f"Unknown model size {size!r}; choose one of {sorted(SIZES)}.")
    out = dict(SIZES[size])
    for key, value in (("hidden_dim", hidden_dim), ("n_layers", n_layers), ("n_heads", n_heads)):
        if value is not None:
            out[key] = int(value)
    if out["hidden_dim"] % out["n_heads"]:
        raise ValueError(
            f"hidden_dim {out['hidden_dim']} must be a multiple of n_heads {out['n_heads']}."
        )
    return out


def mlp(
    in_dim: int, hidden_dim: int, out_dim: int, *, dropout: float, norm: bool = True
) -> nn.Sequential:
    """``Linear -> [LayerNorm] -> GELU -> Dropout -> Linear``.

    The perturbation encoder has no LayerNorm: it would normalise away how strong an
    evidence vector is, which is information.
    """
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
    if norm:
        layers.append(nn.LayerNorm(hidden_dim))
    layers += [nn.GELU(), nn.Dropout(dropout)]
    width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class SetTransformer(nn.Module):
    """Bidirectional pre-norm transformer over a set of cells, no positional encoding.

    Args:
        hidden_dim: Token width.
        n_layers: Layers.
        n_heads: Attention heads.
        dropout: Dropout probability.
    """

    def __init__(self, hidden_dim: int, n_layers: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model=hidden_dim,
            nhead=n_heads,
            dim_feedforward=4 * hidden_dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # nested tensors are a fast path for padded inference only; sentences are full
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, S, H] -> [B, S, H]``; every cell attends to every cell of its set."""
        return self.norm(self.encoder(tokens))


class StateTransitionNet(nn.Module):
    """The ST network: basal encoder + perturbation encoder (+ batch) -> set transformer.

    ``forward`` maps a sentence of control cells ``[B, S, G]``, one perturbation vector per
    sentence ``[B, P]`` and optional batch codes ``[B, S]`` to predicted cells
    ``[B, S, G]`` (and ``[B, S, G_all]`` with a decoder). With ``predict_residual`` the
    output is the control input plus a predicted delta, so a zero delta means "no effect".
    """

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        h, p = arch.hidden_dim, arch.dropout
        self.basal_encoder = mlp(arch.input_dim, h, h, dropout=p)
        self.pert_encoder = mlp(arch.perturbation_dim, h, h, dropout=p, norm=False)
        self.batch_encoder = nn.Embedding(arch.n_batches, h) if arch.n_batches else None
        self.transformer = SetTransformer(h, arch.n_layers, arch.n_heads, p)
        self.output_head = mlp(h, h, arch.output_dim, dropout=p)
        self.decoder = mlp(h, h, arch.decoder_dim, dropout=p) if arch.decoder_dim else None
        self.direct = None
        self.direct_all = None
        if arch.direct_path:
            self.direct = nn.Linear(arch.perturbation_dim, arch.output_dim, bias=False)
            nn.init.zeros_(self.direct.weight)
            if arch.decoder_dim:
                self.direct_all = nn.Linear(arch.perturbation_dim, arch.decoder_dim, bias=False)
                nn.init.zeros_(self.direct_all.weight)
        # Start from "no effect": zero last layers give pred == control at step 0.
        for head in (self.output_head, self.decoder):
            if head is not None:
                nn.init.zeros_(head[-1].weight)
                nn.init.zeros_(head[-1].bias)

    def latent(
        self,
        ctrl: torch.Tensor,
        pert: torch.Tensor,
        batch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Transformer output per cell ``[B, S, H]`` (the basal state moved by the perturbation)."""
        tokens = self.basal_encoder(ctrl) + self.pert_encoder(pert).unsqueeze(1)
        if self.batch_encoder is not None and batch is not None:
            tokens = tokens + self.batch_encoder(batch)
        return self.transformer(tokens)

    def forward(
        self,
        ctrl: torch.Tensor,
        pert: torch.Tensor,
        batch: torch.Tensor | None = None,
        ctrl_all: torch.Tensor | None = None,
        prior: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Predicted perturbed cells, and the all-gene prediction when there is a decoder.

        Args:
            ctrl: Control cells ``[B, S, G]`` in the input space.
            pert: Perturbation vectors ``[B, P]``.
            batch: Batch code per cell ``[B, S]`` or ``None``.
            ctrl_all: The control cells in the all-gene space (decoder residual), or ``None``.
            prior: A prior delta per sentence ``[B, G]`` added to the predicted delta (the
                network then learns the departure from it), or ``None``.

        Returns:
            ``(pred [B, S, G], pred_all [B, S, G_all] or None)``.
        """
        z = self.latent(ctrl, pert, batch)
        out = self.output_head(z)
        if self.direct is not None:
            out = out + self.direct(pert).unsqueeze(1)
        if prior is not None:
            out = out + prior.unsqueeze(1)
        if self.arch.predict_residual:
            out = ctrl + out
        decoded = None
        if self.decoder is not None:
            decoded = self.decoder(z)
            if self.direct_all is not None:
                decoded = decoded + self.direct_all(pert).unsqueeze(1)
            if self.arch.predict_residual and ctrl_all is not None:
                decoded = ctrl_all + decoded
        return out, decoded
