"""A generated drug screen with a known Hill dose response, plates and tiny training params."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from perturbflow.models.training.train import train_st
from perturbflow.params import PerturbationInputParams, TrainingParams
from tests.models.support import loader_params, make_split, training_params, write_screen
from tests.synthetic import DRUG_COLUMNS, dose_label, drug_split_table, make_drug_screen

EC50 = {"drugA": 0.5, "drugB": 1.0, "drugC": 2.0}
DOSES = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]  # half-log steps
HELD_OUT = 1.0  # the middle dose: never trained, predicted from its neighbours
CONTEXT = "ds.K562"


def input_params(dose: str = "log", dose_interpolation: float = 0.0, **changes):
    """PerturbationInputParams with ``dose`` and ``dose_interpolation``."""
    values = dict(
        identity=True,
        evidence=False,
        target_gene=False,
        features_file=None,
        identity_dropout=0.0,
        dose=dose,
        dose_interpolation=dose_interpolation,
    )
    values.update(changes)
    return PerturbationInputParams(**values)


def drug_training(root: Path, *, dose: str, steps: int = 200, **inputs) -> TrainingParams:
    """Tiny training params for the drug screen (one CPU thread)."""
    params = training_params(cpu_threads=1, max_steps=steps, val_every_n_steps=50)
    model = dataclasses.replace(params.model, inputs=input_params(dose, **inputs))
    return dataclasses.replace(params, model=model, splits=["doses"])


@pytest.fixture(scope="session")
def drug_screen(tmp_path_factory) -> dict:
    """Three drugs at five doses on three plates; the middle dose of every drug is test."""
    root = tmp_path_factory.mktemp("drugs")
    adata, truth = make_drug_screen(EC50, DOSES)
    path = write_screen(adata, root / "drugs.h5ad")
    held = {("K562", dose_label(d, HELD_OUT)): "test" for d in EC50}
    table = drug_split_table(adata, {"doses": held}, control_label="DMSO")
    split = make_split(adata, path, table, "doses")
    return {
        "adata": adata,
        "truth": truth,
        "path": path,
        "table": table,
        "split": split,
        "root": root,
    }


def train_drugs(screen: dict, name: str, *, dose: str, pairing: str = "batch", **kw) -> dict:
    """Train a model on the drug screen into ``<root>/<name>``; returns the summary."""
    run_dir = screen["root"] / name
    summary = train_st(
        screen["split"],
        columns=DRUG_COLUMNS,
        loader=loader_params(pairing=pairing, include_control_sentences=False),
        training=drug_training(screen["root"], dose=dose, **kw),
        run_dir=run_dir,
    )
    return {"run_dir": run_dir, "summary": summary}
