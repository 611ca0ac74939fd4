"""Dose-interpolation augmentation fills a wide gap between two observed doses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from perturbflow.exceptions import InputError
from perturbflow.models.inference.predict import predict_cells
from perturbflow.models.runs.run_dir import TrainedRun, load_run
from perturbflow.models.training.train import train_st
from tests.drugs.support import CONTEXT, EC50, HELD_OUT, drug_training
from tests.models.support import loader_params, make_split, write_screen
from tests.synthetic import DRUG_COLUMNS, dose_label, drug_split_table, hill, make_drug_screen

DECADES = [0.01, 0.1, 1.0, 10.0, 100.0]  # the held-out 1 uM sits in a two-decade gap


@pytest.fixture(scope="module")
def sparse_screen(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sparse")
    adata, truth = make_drug_screen(EC50, DECADES)
    path = write_screen(adata, root / "sparse.h5ad")
    held = {("K562", dose_label(d, HELD_OUT)): "test" for d in EC50}
    table = drug_split_table(adata, {"doses": held}, control_label="DMSO")
    split = make_split(adata, path, table, "doses")
    return {"adata": adata, "truth": truth, "split": split, "root": root}


def _train(screen: dict, name: str, **inputs) -> TrainedRun:
    run_dir = screen["root"] / name
    train_st(
        screen["split"],
        columns=DRUG_COLUMNS,
        loader=loader_params(pairing="batch", include_control_sentences=False),
        training=drug_training(screen["root"], **inputs),
        run_dir=run_dir,
    )
    return load_run(run_dir)


def test_interpolated_training_predicts_the_gap_dose_near_the_interpolation(sparse_screen):
    run = _train(sparse_screen, "interp", dose="log", dose_interpolation=1.0)
    data, truth = sparse_screen["split"].data, sparse_screen["truth"]
    labels = [dose_label(d, HELD_OUT) for d in EC50]
    pred = predict_cells(run, data, {(CONTEXT, p): 36 for p in labels}, seed=0)
    ctrl = data.X[data.control_rows(CONTEXT)].mean(axis=0)
    for drug, ec50 in EC50.items():
        label = dose_label(drug, HELD_OUT)
        delta = pred.cells[(CONTEXT, label)].mean(axis=0) - ctrl
        real = truth[("K562", label)]
        assert np.corrcoef(delta, real)[0, 1] > 0.9
        # the response along the drug's direction, against the truth's and the linear
        # interpolation (in the log-dose coordinate) of the two observed neighbours
        direction = truth[("K562", dose_label(drug, 100.0))] / hill(100.0, ec50)
        level = float(delta @ direction / (direction @ direction))
        prior = 0.5 * (hill(0.1, ec50) + hill(10.0, ec50))
        assert abs(level - prior) < 0.2, (drug, level, prior, hill(HELD_OUT, ec50))


def test_interpolation_needs_the_log_dose_encoding_and_the_gene_space(sparse_screen):
    with pytest.raises(InputError, match="needs dose-aware inputs"):
        _train(sparse_screen, "bad", dose="none", dose_interpolation=0.5)
    params = drug_training(sparse_screen["root"], dose="log", dose_interpolation=0.5)
    params = dataclasses.replace(
        params, model=dataclasses.replace(params.model, output_space="all")
    )
    with pytest.raises(InputError, match="not available with the all-gene output space"):
        train_st(
            sparse_screen["split"],
            columns=DRUG_COLUMNS,
            loader=loader_params(pairing="batch", include_control_sentences=False),
            training=params,
            run_dir=sparse_screen["root"] / "bad_all",
        )
