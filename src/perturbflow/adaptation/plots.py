"""The MMD curve of an shift fit (matplotlib; the pipeline's catalog writes the PNG)."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure


def plot_mmd_curve(curve: pd.DataFrame, *, title: str = "Shift fit") -> Figure:
    """Evaluation MMD^2 (fixed sample) and mean minibatch MMD^2 against the step.

    Args:
        curve: ``ShiftFit.curve`` (``step``, ``eval_mmd2``, ``batch_mmd2``).
        title: Figure title.
    """
    # a Figure without pyplot: no global backend switch (a notebook importing the
    # pipelines keeps its inline backend), no figure left open in pyplot's registry
    fig = Figure(figsize=(5.5, 3.5), dpi=120)
    ax = fig.subplots()
    ax.plot(curve["step"], curve["eval_mmd2"], marker="o", ms=3, label="evaluation sample")
    batch = curve.dropna(subset=["batch_mmd2"])
    ax.plot(batch["step"], batch["batch_mmd2"], alpha=0.6, label="minibatches (mean)")
    best = curve.loc[curve["eval_mmd2"].idxmin()]
    ax.axvline(best["step"], color="grey", ls=":", lw=1, label=f"kept (step {int(best['step'])})")
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_xlabel("step")
    ax.set_ylabel("MMD$^2$ (unbiased, multi-scale RBF)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
