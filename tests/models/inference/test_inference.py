"""Inference from control cells: gene alignment, errors, reload, the CLI."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from perturbflow.commands import run_cli
from perturbflow.design import CONTEXT_SEP
from perturbflow.exceptions import InputError
from perturbflow.models.inference.infer import infer_adata
from perturbflow.models.inference.predict import predict_cells
from perturbflow.models.runs.run_dir import load_run
from tests.models.inference.inference_data import infer_args, split_cells
from tests.synthetic import COLUMNS


def _test_input(adata: ad.AnnData) -> ad.AnnData:
    """Context C: its controls and its p3 cells (the held-out key)."""
    obs = adata.obs
    keep = (obs["celltype"] == "C") & obs["pert"].isin(["ctrl", "p3"])
    return adata[keep.to_numpy()].copy()


def test_prediction_is_from_controls_and_cell_eval_shaped(trained_run):
    run = load_run(trained_run["run_dir"])
    data_in = _test_input(trained_run["adata"])
    out, sources = infer_adata(run, data_in, COLUMNS, seed=0)
    n_ctrl = int((data_in.obs["pert"] == "ctrl").sum())
    n_p3 = int((data_in.obs["pert"] == "p3").sum())
    assert out.n_obs == n_ctrl + n_p3
    assert list(out.var_names) == run.genes
    assert set(out.obs["pert"]) == {"ctrl", "p3"}
    assert sources["source"].tolist() == ["identity+evidence:other_contexts"]
    # the perturbed cells are never read: changing them leaves the prediction unchanged
    changed = data_in.copy()
    changed.X[(changed.obs["pert"] == "p3").to_numpy()] += 5.0
    out2, _ = infer_adata(run, changed, COLUMNS, seed=0)
    np.testing.assert_allclose(out.X, out2.X)


def test_gene_reordered_input_gives_the_same_output(trained_run):
    run = load_run(trained_run["run_dir"])
    data_in = _test_input(trained_run["adata"])
    out, _ = infer_adata(run, data_in, COLUMNS, seed=0)
    rng = np.random.default_rng(0)
    shuffled = data_in[:, rng.permutation(data_in.n_vars)].copy()
    extra = ad.AnnData(
        X=np.hstack([shuffled.X, np.ones((shuffled.n_obs, 2), np.float32)]),
        obs=shuffled.obs,
    )
    extra.var_names = list(shuffled.var_names) + ["extra1", "extra2"]
    out2, _ = infer_adata(run, extra, COLUMNS, seed=0)
    assert list(out2.var_names) == list(extra.var_names)  # the input's genes, in its order
    assert out2.var["predicted"].tolist() == [g in run.genes for g in extra.var_names]
    np.testing.assert_allclose(out.X, out2[:, run.genes].X, rtol=1e-6)


def test_missing_genes_are_listed(trained_run):
    run = load_run(trained_run["run_dir"])
    data_in = _test_input(trained_run["adata"])[:, 3:].copy()
    with pytest.raises(InputError, match=r"3 of the model's 24 genes are missing.*g0"):
        infer_adata(run, data_in, COLUMNS, source="in.h5ad")


def test_unknown_perturbation_is_an_error_unless_allowed(trained_run):
    run = load_run(trained_run["run_dir"])
    data_in = _test_input(trained_run["adata"])
    with pytest.raises(InputError, match=r"unknown to the model.*NOVEL"):
        infer_adata(run, data_in, COLUMNS, perturbations=["NOVEL"])
    out, sources = infer_adata(
        run,
        data_in,
        COLUMNS,
        perturbations=["NOVEL"],
        allow_unknown=True,
        cells_per_perturbation=20,
    )
    assert sources["source"].tolist() == ["none"]
    assert int((out.obs["pert"] == "NOVEL").sum()) == 20


def test_context_without_controls_is_an_error(trained_run):
    run = load_run(trained_run["run_dir"])
    adata = trained_run["adata"]
    no_ctrl = adata[((adata.obs["celltype"] == "C") & (adata.obs["pert"] == "p3")).to_numpy()]
    mixed = ad.concat([_test_input(adata)[:10], no_ctrl.copy()])
    mixed.obs_names_make_unique()
    mixed.obs["celltype"] = mixed.obs["celltype"].astype(str)
    mixed.obs.loc[mixed.obs["pert"] == "p3", "celltype"] = "D"
    with pytest.raises(InputError, match=r"ds\.D.*no control cells"):
        infer_adata(run, mixed, COLUMNS, source="in.h5ad")


def test_raw_counts_are_refused(trained_run):
    run = load_run(trained_run["run_dir"])
    data_in = _test_input(trained_run["adata"])
    data_in.X = np.round(np.expm1(data_in.X) * 10).astype(np.float32)
    with pytest.raises(InputError, match="raw counts"):
        infer_adata(run, data_in, COLUMNS)


def test_control_mean_inputs(trained_run):
    run = load_run(trained_run["run_dir"])
    out, _ = infer_adata(run, _test_input(trained_run["adata"]), COLUMNS, control_mean=True)
    pred = out.X[(out.obs["pert"] == "p3").to_numpy()]
    assert np.allclose(pred, pred[0], atol=1e-5)  # identical inputs: identical cells


def test_cli_infer_writes_predictions_and_sources(trained_run, tmp_path, capsys):
    src = tmp_path / "in.h5ad"
    _test_input(trained_run["adata"]).write_h5ad(src)
    out = tmp_path / "pred.h5ad"
    args = infer_args(trained_run["run_dir"], src, "--output", str(out))
    cmd = [sys.executable, "-m", "perturbflow", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    pred = ad.read_h5ad(out)
    assert set(pred.obs["pert"]) == {"ctrl", "p3"}
    assert out.with_suffix(".sources.csv").is_file()
    # the same command line in-process (the process start above is tested once)
    bad = [*args[:-1], str(tmp_path / "x.h5ad"), "--perturbations", str(tmp_path / "none.txt")]
    assert run_cli(bad) == 2
    assert "none.txt: no such file" in capsys.readouterr().err


def test_batch_encoder_trains_and_infers_with_batch_codes(planted, tmp_path):
    import dataclasses

    from perturbflow.models.training.train import train_st
    from tests.models.support import loader_params, make_split, training_params

    adata = planted["adata"].copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "b1", "b2")
    path = tmp_path / "screen.h5ad"
    adata.write_h5ad(path)
    columns = dataclasses.replace(COLUMNS, batch_col="batch")
    params = training_params(max_steps=6, val_every_n_steps=3, ckpt_every_n_steps=3)
    params = dataclasses.replace(
        params, model=dataclasses.replace(params.model, batch_encoder=True)
    )
    split = make_split(adata, path, planted["table"], "zs")
    train_st(
        split, columns=columns, loader=loader_params(), training=params, run_dir=tmp_path / "r"
    )
    run = load_run(tmp_path / "r")
    assert run.net.batch_encoder is not None and (tmp_path / "r" / "batch_map.json").is_file()
    data_in = _test_input(adata)
    out, _ = infer_adata(run, data_in, columns)
    assert int((out.obs["pert"] == "p3").sum()) == int((data_in.obs["pert"] == "p3").sum())
    # from control means per batch, a gene the model does not predict is its batch's mean
    extra = ad.AnnData(
        X=np.hstack([data_in.X, np.linspace(0.1, 2.0, data_in.n_obs, dtype=np.float32)[:, None]]),
        obs=data_in.obs,
    )
    extra.var_names = [*data_in.var_names, "extra"]
    out, _ = infer_adata(run, extra, columns, control_mean=True)
    ctrl = extra.obs["pert"] == "ctrl"
    means = [
        extra.X[(ctrl & (extra.obs["batch"] == b)).to_numpy(), -1].mean() for b in ("b1", "b2")
    ]
    got = out.X[(out.obs["pert"] == "p3").to_numpy(), -1]
    assert np.all(np.isclose(got[:, None], np.array(means)[None, :], rtol=1e-6).any(axis=1))
    assert not out.var["predicted"].iloc[-1] and out.var["predicted"].iloc[:-1].all()
    with pytest.raises(InputError, match="name the batch column"):
        infer_adata(run, data_in, COLUMNS)
    data_in.obs["batch"] = "b9"
    with pytest.raises(InputError, match="b9"):
        infer_adata(run, data_in, columns, source="in.h5ad")


def test_subtracted_control_offset_returns_controls_and_shifts_predictions(trained_run):
    run = load_run(trained_run["run_dir"])
    data_in = _test_input(trained_run["adata"])
    data = split_cells(data_in, run)
    keys = {("ds" + CONTEXT_SEP + "C", p): 8 for p in ("ctrl", "p3")}  # the control, a key

    def predicted(offset: str) -> dict[str, np.ndarray]:
        # control means: every sentence reads the same inputs, so the keys are comparable
        out = predict_cells(run, data, keys, seed=0, control_mean=True, control_offset=offset)
        return {p: out.cells[k] for k, p in zip(keys, ("ctrl", "p3"), strict=True)}

    kept, subtracted = predicted("keep"), predicted("subtract")
    X, is_control = data.X, data.cells["is_control"].to_numpy()
    ctrl_mean = np.broadcast_to(X[is_control].mean(axis=0), (8, X.shape[1]))
    # kept: the model moves its own controls (a nonzero offset); subtracted: it returns them
    assert np.abs(kept["ctrl"] - ctrl_mean).max() > 1e-3
    np.testing.assert_allclose(subtracted["ctrl"], ctrl_mean, atol=1e-5)
    # a perturbation: its prediction minus the control's offset (where nothing was clipped)
    expected = kept["p3"] - (kept["ctrl"] - ctrl_mean)
    unclipped = (kept["p3"] > 0) & (kept["ctrl"] > 0) & (expected > 0)
    assert unclipped.mean() > 0.5
    np.testing.assert_allclose(subtracted["p3"][unclipped], expected[unclipped], atol=1e-4)
    with pytest.raises(InputError, match="control_offset"):
        predict_cells(run, data, keys, seed=0, control_offset="remove")


def test_control_mean_inputs_are_the_context_and_batch_means(trained_run):
    from perturbflow.models.inference.control_draw import ControlMeans, draw_control_inputs

    run = load_run(trained_run["run_dir"])
    data = split_cells(_test_input(trained_run["adata"]), run)
    context = "ds" + CONTEXT_SEP + "C"
    ctrl = data.control_rows(context)
    batch = np.arange(len(data.X)) % 3  # three batches among the controls
    shifted = data.X + 0.5
    for inputs in (None, shifted):
        means = ControlMeans(data, inputs)
        M = data.X if inputs is None else inputs
        rng = np.random.default_rng(0)
        X, _, _ = draw_control_inputs(data, context, 20, rng, means, control_mean=True, batch=None)
        np.testing.assert_allclose(X, np.broadcast_to(M[ctrl].mean(axis=0), X.shape), atol=1e-5)
        X, codes, picked = draw_control_inputs(
            data, context, 20, rng, means, control_mean=True, batch=batch
        )
        np.testing.assert_array_equal(codes, batch[picked])
        for code in np.unique(codes):
            expected = M[ctrl[batch[ctrl] == code]].mean(axis=0)
            np.testing.assert_allclose(
                X[codes == code], np.broadcast_to(expected, X[codes == code].shape), atol=1e-5
            )
    assert len(np.unique(batch[ctrl])) == 3


def test_network_cells_are_centred_on_the_control_draw(trained_run):
    run = load_run(trained_run["run_dir"])
    data = split_cells(_test_input(trained_run["adata"]), run)
    context = "ds" + CONTEXT_SEP + "C"
    keys = {(context, "p3"): 40, (context, "ctrl"): 40}
    population = data.control_mean(context)
    for seed in (0, 1, 2):
        drawn = predict_cells(run, data, keys, seed=seed, centre_draw=False)
        centred = predict_cells(run, data, keys, seed=seed)
        key = (context, "p3")
        np.testing.assert_array_equal(drawn.starts[key], centred.starts[key])  # same draw
        shift = population - data.X[drawn.starts[key]].mean(axis=0)
        # where nothing was clipped at zero, the cells moved by the draw's deviation
        unclipped = (drawn.cells[key] > 0).all(axis=0) & (centred.cells[key] > 0).all(axis=0)
        assert unclipped.sum() >= 5
        np.testing.assert_allclose(
            centred.cells[key][:, unclipped] - drawn.cells[key][:, unclipped],
            np.tile(shift[unclipped], (40, 1)),
            atol=1e-4,
        )
        # the control label keeps the cells drawn
        ctrl = (context, "ctrl")
        np.testing.assert_array_equal(centred.cells[ctrl], drawn.cells[ctrl])
