"""Plate (batch) pairing of a drug screen, and the dose-interpolation augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from perturbflow.loading.datamodule import PerturbationDataModule
from perturbflow.loading.dose_interpolation import dose_neighbours, group_deltas
from perturbflow.loading.sentences import group_cells
from perturbflow.models.inference.plates import predict_per_plate
from perturbflow.models.runs.run_dir import load_run
from perturbflow.models.training.train import train_st
from tests.drugs.support import EC50, HELD_OUT, drug_training
from tests.models.support import loader_params, make_split, write_screen
from tests.synthetic import DRUG_COLUMNS, dose_label, drug_split_table, make_drug_screen


@pytest.fixture(scope="module")
def two_lines(tmp_path_factory) -> dict:
    """Two cell lines on three plates, strong plate offsets; the middle doses held out."""
    adata, truth = make_drug_screen(
        EC50, [0.01, 0.1, 1.0, 10.0], contexts=("K562", "A549"), plate_scale=0.6, seed=3
    )
    path = write_screen(adata, tmp_path_factory.mktemp("plates") / "screen.h5ad")
    held = {(c, dose_label(d, HELD_OUT)): "test" for d in EC50 for c in ("K562", "A549")}
    table = drug_split_table(adata, {"s": held}, control_label="DMSO")
    return {"adata": adata, "truth": truth, "path": path, "table": table}


def _module(screen: dict, pairing: str, **kw) -> PerturbationDataModule:
    loader = loader_params(pairing=pairing, include_control_sentences=False, batch_size=64)
    return PerturbationDataModule(
        str(screen["path"]), screen["adata"].obs, screen["table"], "s", DRUG_COLUMNS, loader, **kw
    )


@pytest.mark.parametrize("pairing", ["batch", "random"])
def test_every_cell_is_paired_with_a_control_of_its_plate_and_cell_line(two_lines, pairing):
    dm = _module(two_lines, pairing)
    sampler = dm.train_dataloader().batch_sampler
    obs = two_lines["adata"].obs
    plate, line = obs["plate"].to_numpy(), obs["celltype"].to_numpy()
    is_ctrl = (obs["pert"] == "DMSO").to_numpy()
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        sentences, controls, _ = sampler.draw()
        pert, ctrl = sentences.ravel(), controls.ravel()
        assert is_ctrl[ctrl].all() and not is_ctrl[pert].any()
        assert (line[ctrl] == line[pert]).all()  # never across cell lines
        same_plate = plate[ctrl] == plate[pert]
        if pairing == "batch":
            assert same_plate.all()
        else:  # the check can fail: random pairing crosses plates
            assert same_plate.mean() < 0.6


def test_the_loader_serves_plate_matched_controls(two_lines):
    dm = _module(two_lines, "batch")
    adata = two_lines["adata"]
    batch = next(iter(dm.train_dataloader()))
    rows = batch["pert_rows"].numpy()
    np.testing.assert_array_equal(batch["pert_cell_emb"].numpy(), adata.obsm["X_hvg"][rows])
    # each control row is one of the DMSO cells of the perturbed cell's plate and line
    X = adata.obsm["X_hvg"]
    obs = adata.obs
    ctrl = batch["ctrl_cell_emb"].numpy().reshape(-1, X.shape[1])
    for r, c in zip(rows.ravel()[:50], ctrl[:50], strict=True):
        pool = (obs["pert"] == "DMSO") & (obs["plate"] == obs["plate"].iloc[r])
        pool &= obs["celltype"] == obs["celltype"].iloc[r]
        assert np.isclose(X[pool.to_numpy()], c).all(axis=1).any()
    assert "mix_weight" not in batch  # augmentation is off by default


def test_adjacent_doses_skip_the_held_out_one(two_lines):
    dm = _module(two_lines, "batch")
    groups = group_cells(dm.cells, split_col="s", label="train", include_controls=False)
    neighbours = dose_neighbours(groups.keys, control_label="DMSO")
    index = {k: i for i, k in enumerate(groups.keys)}
    near = neighbours.partners[index[("ds.K562", "drugB@0.1uM")]]
    assert sorted(groups.keys[g][1] for g in near) == ["drugB@0.01uM", "drugB@10uM"]
    assert all(groups.keys[g][0] == "ds.K562" for g in near)
    assert neighbours.n_interpolable == len(groups.keys)


def test_group_deltas_cancel_plate_offsets(two_lines):
    dm = _module(two_lines, "batch")
    dm.setup()
    groups = group_cells(dm.cells, split_col="s", label="train", include_controls=False)
    deltas = group_deltas(dm.reader.read, dm.design, groups.rows, np.arange(len(groups.keys)))
    for g, (context, label) in enumerate(groups.keys):
        truth = two_lines["truth"][(context.split(".")[1], label)]
        np.testing.assert_allclose(deltas[g], truth, atol=0.12)


def test_interpolated_sentences_shift_cells_towards_the_adjacent_dose(two_lines):
    dm = _module(two_lines, "batch", dose_interpolation=1.0)
    adata, truth = two_lines["adata"], two_lines["truth"]
    perts = dm.vocabulary.perturbations
    batch = next(iter(dm.train_dataloader()))
    weight = batch["mix_weight"].numpy()
    assert ((weight > 0) & (weight < 1)).all()  # rate 1: every sentence is interpolated
    rows = batch["pert_rows"].numpy()
    shift = batch["pert_cell_emb"].numpy() - adata.obsm["X_hvg"][rows]
    assert np.allclose(shift, shift[:, :1], atol=1e-5)  # one shift per sentence
    line = adata.obs["celltype"].to_numpy()
    for i in range(len(rows)):
        own, partner = perts[batch["pert_index"][i]], perts[batch["mix_pert_index"][i]]
        assert own.split("@")[0] == partner.split("@")[0] and own != partner
        c = line[rows[i, 0]]
        expected = weight[i] * (truth[(c, partner)] - truth[(c, own)])
        np.testing.assert_allclose(shift[i, 0], expected, atol=0.15)
    # the control side is untouched: still the plate's DMSO cells
    X = adata.obsm["X_hvg"]
    ctrl = batch["ctrl_cell_emb"].numpy().reshape(-1, X.shape[1])
    is_ctrl = (adata.obs["pert"] == "DMSO").to_numpy()
    assert all(np.isclose(X[is_ctrl], c).all(axis=1).any() for c in ctrl[:20])


def test_plate_pairing_removes_the_plate_bias_of_a_confounded_screen(tmp_path):
    """Each drug on its own plate: a control from another plate biases every delta."""
    adata, truth = make_drug_screen(EC50, [0.01, 0.1, 1.0, 10.0], confounded=True, seed=1)
    path = write_screen(adata, tmp_path / "confounded.h5ad")
    table = drug_split_table(adata, {"doses": {}}, control_label="DMSO")
    split = make_split(adata, path, table, "doses")
    errors = {}
    for pairing in ("batch", "random"):
        run_dir = tmp_path / pairing
        train_st(
            split,
            columns=DRUG_COLUMNS,
            loader=loader_params(pairing=pairing, include_control_sentences=False),
            training=drug_training(tmp_path, dose="log", steps=150),
            run_dir=run_dir,
        )
        data, plates = split.data, adata.obs["plate"].to_numpy()
        pert = data.cells["perturbation"].to_numpy()
        labels = sorted(set(pert) - {"DMSO"})
        keys = {("ds.K562", str(np.unique(plates[pert == p])[0]), p): 24 for p in labels}
        pred = predict_per_plate(load_run(run_dir), data, plates, keys, seed=0)
        is_ctrl = data.cells["is_control"].to_numpy()
        sq = []
        for (_, plate, p), cells in pred.items():
            base = data.X[is_ctrl & (plates == plate)].mean(axis=0)
            sq.append(np.mean((cells.mean(axis=0) - base - truth[("K562", p)]) ** 2))
        errors[pairing] = float(np.mean(sq))
    assert errors["batch"] < 0.3 * errors["random"], errors
