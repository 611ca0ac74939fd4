"""The shift on disk (bound to its run) and predictions from adapted controls."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from perturbflow.adaptation import (
    GeneShift,
    MMDShift,
    embed,
    fit_shift,
    load_shift,
    mean_table,
    predict_adapted,
    read_shift,
    shift_metadata,
    write_shift,
)
from perturbflow.exceptions import InputError
from perturbflow.models.inference.infer import infer_adata
from perturbflow.models.runs.run_dir import load_run
from tests.adaptation.support import control_cloud, fit_params
from tests.synthetic import COLUMNS


def _target(adapt_run):
    """Context C: its controls and its p3 cells."""
    adata = adapt_run["adata"]
    keep = (adata.obs["celltype"] == "C") & adata.obs["pert"].isin(["ctrl", "p3"])
    return adata[keep.to_numpy()].copy()


def _fit(run, adapt_run, steps: int = 40):
    source = control_cloud(adapt_run["adata"], "C", 300, seed=1)
    target = control_cloud(adapt_run["adata"], "C", 300, seed=2) - 0.3
    emb = embed(run.net.basal_encoder, source, chunk_size=128)
    params = fit_params(max_steps=steps, eval_every=10)
    return fit_shift(run.net.basal_encoder, target, emb, params), params


def test_saved_shift_loads_back_and_only_for_its_run(run, adapt_run, tmp_path):
    fit, params = _fit(run, adapt_run)
    meta = shift_metadata(fit, run, params, note="x")
    write_shift(tmp_path / "shift", MMDShift(fit.shift, meta))
    on_disk = json.loads((tmp_path / "shift" / "shift.json").read_text())
    assert on_disk["run_digest"] == run.digest
    assert on_disk["genes"] == run.genes
    assert on_disk["curve"][0]["step"] == 0
    assert on_disk["mmd2_after"] <= on_disk["mmd2_before"]
    state = torch.load(tmp_path / "shift" / "shift.pt", weights_only=True)
    assert set(state) == {"shift"}
    shift, _ = load_shift(tmp_path / "shift", run)
    torch.testing.assert_close(shift.shift, fit.shift.shift)
    # another run (a copy whose configuration digest differs) refuses the shift
    other_dir = tmp_path / "other_run"
    shutil.copytree(run.path, other_dir)
    summary = json.loads((other_dir / "run.json").read_text())
    summary["config_sha256"] = "0" * 64
    (other_dir / "run.json").write_text(json.dumps(summary))
    with pytest.raises(InputError, match="fitted for run .* not for .*other_run"):
        load_shift(tmp_path / "shift", load_run(other_dir))
    with pytest.raises(InputError, match="not an MMD shift folder"):
        load_shift(tmp_path / "nowhere", run)
    # a folder written before the rename (adapter.json) still reads
    (tmp_path / "shift" / "shift.json").rename(tmp_path / "shift" / "adapter.json")
    assert read_shift(tmp_path / "shift").meta["run_digest"] == run.digest


def test_unadapted_prediction_is_the_plain_inference(run, adapt_run):
    target = _target(adapt_run)
    plain, _ = infer_adata(run, target, COLUMNS, seed=0)
    none = predict_adapted(run, target, COLUMNS, None, perturbations=None, seed=0)
    identity = predict_adapted(
        run, target, COLUMNS, GeneShift(len(run.genes), scale=True), perturbations=None, seed=0
    )
    np.testing.assert_allclose(none.cells.X, plain.X)
    np.testing.assert_allclose(identity.cells.X, plain.X, atol=1e-6)


def test_adapted_predictions_start_from_shifted_controls_and_map_back(run, adapt_run):
    target = _target(adapt_run)
    shift = GeneShift(len(run.genes), scale=False)
    with torch.no_grad():
        shift.shift.copy_(torch.linspace(-0.4, 0.4, len(run.genes)))
    mapped = predict_adapted(run, target, COLUMNS, shift, perturbations=["p3"], seed=0)
    raw = predict_adapted(run, target, COLUMNS, shift, perturbations=["p3"], seed=0, map_back=False)
    plain = predict_adapted(run, target, COLUMNS, None, perturbations=["p3"], seed=0)
    is_ctrl = (mapped.cells.obs["pert"] == "ctrl").to_numpy()
    real_ctrl = target.X[(target.obs["pert"] == "ctrl").to_numpy()]
    # the output's control cells are the target's own, never the shifted ones
    np.testing.assert_allclose(mapped.cells.X[is_ctrl], real_ctrl)
    np.testing.assert_allclose(raw.cells.X[is_ctrl], real_ctrl)
    # the model read shifted controls: its prediction changed
    assert not np.allclose(mapped.cells.X[~is_ctrl], plain.cells.X[~is_ctrl])
    # map_back = the shift's inverse on the same predicted cells (where nothing clipped)
    shift = shift.shift.detach().numpy()
    expected = raw.cells.X[~is_ctrl] - shift
    ok = (raw.cells.X[~is_ctrl] > 0) & (expected > 0)
    np.testing.assert_allclose(mapped.cells.X[~is_ctrl][ok], expected[ok], rtol=1e-5, atol=1e-5)
    assert mapped.cells.uns["perturbflow_adaptation"]["map_back"] is True
    # the mean table is the predicted cells' mean
    means = mapped.means.set_index("perturbation")
    assert means.loc["p3", "n_cells"] == int((~is_ctrl).sum())
    np.testing.assert_allclose(
        means.loc["p3", run.genes].to_numpy(dtype=float),
        mapped.cells.X[~is_ctrl].mean(axis=0),
        rtol=1e-5,
    )
    assert mean_table(mapped.cells, COLUMNS).shape == (1, 3 + len(run.genes))


def test_unknown_perturbations_as_in_inference(run, adapt_run):
    target = _target(adapt_run)
    shift = GeneShift(len(run.genes), scale=False)
    with pytest.raises(InputError, match="unknown to the model.*NOVEL"):
        predict_adapted(run, target, COLUMNS, shift, perturbations=["NOVEL"])
    out = predict_adapted(run, target, COLUMNS, shift, perturbations=["NOVEL"], allow_unknown=True)
    assert out.sources["source"].tolist() == ["none"]
