"""The dose-aware ST model learns a Hill dose response and interpolates a held-out dose."""

from __future__ import annotations

import dataclasses
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbflow.commands import run_cli
from perturbflow.exceptions import InputError
from perturbflow.models.components.inputs import PerturbationInputs
from perturbflow.models.inference.infer import infer_adata
from perturbflow.models.inference.plates import predict_per_plate
from perturbflow.models.inference.predict import predict_cells
from perturbflow.models.runs.run_dir import load_run
from perturbflow.splits.effects import training_effects
from tests.drugs.support import CONTEXT, DOSES, EC50, HELD_OUT, input_params, train_drugs
from tests.synthetic import DRUG_COLUMNS, dose_label

N = 36  # cells predicted per key (as many as the real ones: 12 per plate)


@pytest.fixture(scope="module")
def runs(drug_screen) -> dict:
    return {
        "log": train_drugs(drug_screen, "log", dose="log"),
        "none": train_drugs(drug_screen, "none", dose="none"),
    }


def _deltas(run_dir, screen: dict, labels: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Predicted mean delta per label (against the context's control mean)."""
    data = screen["split"].data
    pred = predict_cells(load_run(run_dir), data, {(CONTEXT, p): N for p in labels}, seed=seed)
    ctrl = data.X[data.control_rows(CONTEXT)].mean(axis=0)
    return {p: pred.cells[(CONTEXT, p)].mean(axis=0) - ctrl for (p,) in zip(labels, strict=True)}


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_the_held_out_dose_is_interpolated(runs, drug_screen):
    metrics = pd.read_csv(runs["log"]["run_dir"] / "logs" / "metrics.csv")
    losses = metrics["train/loss"].dropna().to_numpy()
    assert losses[-5:].mean() < 0.5 * losses[:5].mean()  # the loss falls
    truth = drug_screen["truth"]
    lo, hi = DOSES[DOSES.index(HELD_OUT) - 1], DOSES[DOSES.index(HELD_OUT) + 1]
    for drug in EC50:
        labels = [dose_label(drug, d) for d in (lo, HELD_OUT, hi)]
        pred = _deltas(runs["log"]["run_dir"], drug_screen, labels)
        mid = labels[1]
        assert _pearson(pred[mid], truth[("K562", mid)]) > 0.9, drug
        norms = [np.linalg.norm(pred[p]) for p in labels]
        assert norms[0] < norms[1] < norms[2], (drug, norms)  # between its neighbours


def test_without_doses_the_model_cannot_tell_doses_apart(runs, drug_screen):
    truth = drug_screen["truth"]
    trained = [dose_label(d, x) for d in EC50 for x in DOSES if x != HELD_OUT]
    low, high = dose_label("drugA", DOSES[0]), dose_label("drugA", DOSES[-1])
    true_span = np.linalg.norm(truth[("K562", high)] - truth[("K562", low)])
    errors, spans = {}, {}
    for mode in ("log", "none"):
        pred = _deltas(runs[mode]["run_dir"], drug_screen, trained)
        errors[mode] = np.mean([np.mean((pred[p] - truth[("K562", p)]) ** 2) for p in trained])
        spans[mode] = np.linalg.norm(pred[high] - pred[low]) / true_span
    # one vector per drug: the lowest and highest doses get the same prediction
    assert spans["none"] < 0.2 < 0.8 < spans["log"], spans
    assert errors["log"] < 0.25 * errors["none"], errors


def test_a_saved_dosed_run_predicts_identically_and_encodes_as_in_training(
    runs, drug_screen, tmp_path
):
    run_dir = runs["log"]["run_dir"]
    moved = tmp_path / "shared_run"
    shutil.copytree(run_dir, moved)
    labels = [dose_label("drugB", 3.0), "drugA@1uM+drugC@10uM", dose_label("drugC", 1.0)]
    first, again = (_deltas(d, drug_screen, labels, seed=4) for d in (run_dir, moved))
    for p in labels:
        np.testing.assert_array_equal(first[p], again[p])
    data = drug_screen["split"].data
    fitted = PerturbationInputs.fit(
        data, training_effects(data), input_params("log"), control_label="DMSO"
    )
    keys = [(CONTEXT, p) for p in labels]
    np.testing.assert_array_equal(
        load_run(moved).inputs.encode(keys, data).vectors, fitted.encode(keys, data).vectors
    )


def test_per_plate_predictions_start_from_the_plates_controls(runs, drug_screen):
    run = load_run(runs["log"]["run_dir"])
    data = drug_screen["split"].data
    plates = drug_screen["adata"].obs["plate"].to_numpy()
    label = dose_label("drugB", 10.0)
    keys = {(CONTEXT, p, label): 24 for p in ("P1", "P2", "P3")}
    pred = predict_per_plate(run, data, plates, keys, seed=0)
    is_ctrl = data.cells["is_control"].to_numpy()
    ctrl = {p: data.X[is_ctrl & (plates == p)].mean(axis=0) for p in ("P1", "P2", "P3")}
    truth = drug_screen["truth"][("K562", label)]
    for p in ("P1", "P2", "P3"):
        delta = pred[(CONTEXT, p, label)].mean(axis=0) - ctrl[p]
        assert _pearson(delta, truth) > 0.9
    # the plates' predictions differ by the plates' offsets
    shift = pred[(CONTEXT, "P1", label)].mean(axis=0) - pred[(CONTEXT, "P2", label)].mean(axis=0)
    assert _pearson(shift, ctrl["P1"] - ctrl["P2"]) > 0.9
    with pytest.raises(InputError, match="No control cells on plate"):
        predict_per_plate(run, data, plates, {(CONTEXT, "P9", label): 5}, seed=0)


def test_infer_per_batch_predicts_every_plate_from_its_own_controls(runs, drug_screen, tmp_path):
    run = load_run(runs["log"]["run_dir"])
    label, other = dose_label("drugB", 10.0), dose_label("drugA", 1.0)
    adata = drug_screen["adata"]
    screen = adata[adata.obs["pert"].isin(["DMSO", label]).to_numpy()].copy()
    out, sources = infer_adata(run, screen, DRUG_COLUMNS, per_batch=True, seed=0)
    obs = out.obs
    real = screen.obs[screen.obs["pert"] == label].groupby("plate", observed=True).size()
    predicted = obs[obs["pert"] == label].groupby("plate", observed=True).size()
    assert predicted.to_dict() == real.to_dict()  # the screen's own layout, plate by plate
    ctrl_in = screen.obs[screen.obs["pert"] == "DMSO"].groupby("plate", observed=True).size()
    ctrl_out = obs[obs["pert"] == "DMSO"].groupby("plate", observed=True).size()
    assert ctrl_out.to_dict() == ctrl_in.to_dict()  # the real controls keep their plates
    assert sources[["perturbation", "source"]].values.tolist() == [[label, "identity+dose"]]

    def plate_mean(frame, pert: str, plate: str) -> np.ndarray:
        rows = ((frame.obs["pert"] == pert) & (frame.obs["plate"] == plate)).to_numpy()
        return np.asarray(frame.X[rows]).mean(axis=0)

    # each plate's prediction moves with its controls: the plates' offsets carry over
    shift = plate_mean(out, label, "P1") - plate_mean(out, label, "P2")
    assert (
        _pearson(shift, plate_mean(screen, "DMSO", "P1") - plate_mean(screen, "DMSO", "P2")) > 0.9
    )
    # a requested perturbation goes on every plate that has controls
    out2, _ = infer_adata(
        run,
        screen,
        DRUG_COLUMNS,
        per_batch=True,
        perturbations=[other, "DMSO", other],  # the control and repeats are dropped
        cells_per_perturbation=5,
    )
    assert len(out2) == (screen.obs["pert"] == "DMSO").sum() + 15
    pred2 = out2.obs[out2.obs["pert"] == other]
    assert pred2.groupby("plate", observed=True).size().to_dict() == {"P1": 5, "P2": 5, "P3": 5}
    no_batch = dataclasses.replace(DRUG_COLUMNS, batch_col=None)
    with pytest.raises(InputError, match="batch column"):
        infer_adata(run, screen, no_batch, per_batch=True)
    # the CLI
    src, dst = tmp_path / "screen.h5ad", tmp_path / "pred.h5ad"
    screen.write_h5ad(src)
    args = ["infer", "--run", str(runs["log"]["run_dir"]), "--adata", str(src)]
    args += ["--pert-col", "pert", "--control", "DMSO", "--celltype-col", "celltype"]
    args += ["--batch-col", "plate", "--per-batch", "--output", str(dst)]
    assert run_cli(args) == 0
    written = ad.read_h5ad(dst)
    assert (
        written.obs[written.obs["pert"] == label].groupby("plate", observed=True).size().to_dict()
        == real.to_dict()
    )
