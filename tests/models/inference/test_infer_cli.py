"""``perturbflow infer`` end to end: refusals before work, every input gene, cell-eval."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from perturbflow.commands import build_parser, run_cli
from perturbflow.design import CONTEXT_SEP
from perturbflow.exceptions import InputError
from perturbflow.models.inference import gene_space
from perturbflow.models.inference.infer import infer_adata
from perturbflow.models.inference.predict import predict_cells
from perturbflow.models.runs.run_dir import load_run
from tests.models.inference.inference_data import infer_args, split_cells
from tests.synthetic import COLUMNS

EXTRA = ["x0", "x1", "x2", "x3", "x4", "x5"]


def _input(adata: ad.AnnData, *, extra: bool = True) -> ad.AnnData:
    """Context C (controls and p3), with genes the model does not use, in a shuffled order."""
    keep = ((adata.obs["celltype"] == "C") & adata.obs["pert"].isin(["ctrl", "p3"])).to_numpy()
    sub = adata[keep].copy()
    del sub.obsm["X_hvg"]
    if not extra:
        return sub
    rng = np.random.default_rng(1)
    more = np.log1p(rng.gamma(2.0, 3.0, (sub.n_obs, len(EXTRA)))).astype(np.float32)
    X = np.hstack([sub.X, more])
    names = list(sub.var_names) + EXTRA
    order = rng.permutation(len(names))
    out = ad.AnnData(X=X[:, order], obs=sub.obs.copy())
    out.var_names = [names[i] for i in order]
    out.var["symbol"] = [f"sym_{n}" for n in out.var_names]
    return out


def _args(run_dir: Path, adata: Path, output: Path, *extra: str) -> list[str]:
    return infer_args(run_dir, adata, "--output", str(output), *extra)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def src(trained_run, tmp_path) -> Path:
    path = tmp_path / "in.h5ad"
    _input(trained_run["adata"]).write_h5ad(path)
    return path


# ---- 1. the output never replaces the input; its folder must exist and be writable ----
def test_output_that_is_the_input_is_refused(trained_run, src, tmp_path, capsys):
    before = _sha(src)
    (tmp_path / "hard.h5ad").hardlink_to(src)
    (tmp_path / "link.h5ad").symlink_to(src)
    for output in (src, tmp_path / "link.h5ad", tmp_path / "hard.h5ad", tmp_path / "." / "in.h5ad"):
        rc = run_cli(_args(trained_run["run_dir"], src, output))
        err = capsys.readouterr().err
        assert rc == 2
        assert "--output" in err and "--adata" in err and str(output) in err
        assert _sha(src) == before
    # the sources table beside the output would replace the input too
    sources = tmp_path / "pred.sources.csv"
    sources.write_text("context\n")
    rc = run_cli(_args(trained_run["run_dir"], sources, tmp_path / "pred.h5ad"))
    assert rc == 2 and "sources" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "hard.h5ad",
        "in.h5ad",
        "link.h5ad",
        "pred.sources.csv",
    ]


def test_output_folder_must_exist_and_be_writable(trained_run, src, tmp_path, capsys):
    missing = tmp_path / "nope" / "pred.h5ad"
    rc = run_cli(_args(trained_run["run_dir"], src, missing))
    err = capsys.readouterr().err
    assert rc == 2 and str(missing.parent) in err and "--output" in err
    assert not missing.parent.exists()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    rc = run_cli(_args(trained_run["run_dir"], src, a_file / "pred.h5ad"))
    assert rc == 2 and str(a_file) in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)  # read-only, refused even for root (who could write there)
    try:
        rc = run_cli(_args(trained_run["run_dir"], src, locked / "pred.h5ad"))
        err = capsys.readouterr().err
        assert rc == 2 and str(locked) in err and "not writable" in err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


# ---- 2. NaN / inf in what infer reads ------------------------------------------------
def test_nan_in_control_cells_is_refused(trained_run, tmp_path, capsys):
    data = _input(trained_run["adata"])
    ctrl = np.flatnonzero((data.obs["pert"] == "ctrl").to_numpy())[[2, 5, 7]]
    col = list(data.var_names).index("g5")
    data.X[ctrl, col] = np.nan
    path = tmp_path / "nan.h5ad"
    data.write_h5ad(path)
    out = tmp_path / "pred.h5ad"
    rc = run_cli(_args(trained_run["run_dir"], path, out))
    err = capsys.readouterr().err
    assert rc == 2
    assert str(path) in err and "'g5'" in err and "3 cells" in err
    assert repr(str(data.obs_names[ctrl[0]])) in err and "finite log1p" in err
    assert not out.exists() and not out.with_suffix(".sources.csv").exists()


def test_non_finite_values_are_refused_in_sparse_x_and_in_other_genes(trained_run, monkeypatch):
    run = load_run(trained_run["run_dir"])
    data = _input(trained_run["adata"])
    data.X = sp.csr_matrix(data.X)
    data.X[4, list(data.var_names).index("g3")] = np.inf
    with pytest.raises(InputError, match=r"in\.h5ad: .*1 cells.*'g3'.*'cell"):
        infer_adata(run, data, COLUMNS, source="in.h5ad")
    data = _input(trained_run["adata"])
    data.X[1, list(data.var_names).index("x2")] = np.nan  # a gene the model does not read
    with pytest.raises(InputError, match=r"'x2'"):
        infer_adata(run, data, COLUMNS, source="in.h5ad")
    monkeypatch.setattr(gene_space, "BLOCK_ROWS", 7)  # the check reads blocks of rows
    with pytest.raises(InputError, match=r"'x2'"):
        infer_adata(run, data, COLUMNS, source="in.h5ad")


# ---- 3. every input gene, in the input's order; straight into cell-eval --------------
def test_output_carries_every_input_gene_from_the_starting_controls(trained_run):
    run = load_run(trained_run["run_dir"])
    data = _input(trained_run["adata"])
    out, _ = infer_adata(run, data, COLUMNS, seed=0)
    assert list(out.var_names) == list(data.var_names)
    assert out.var["predicted"].dtype == bool
    assert out.var["predicted"].tolist() == [g in run.genes for g in data.var_names]
    assert out.var["symbol"].tolist() == data.var["symbol"].tolist()
    is_pred = (out.obs["pert"] == "p3").to_numpy()
    ctrl = (data.obs["pert"] == "ctrl").to_numpy()
    # control cells: the input's own rows, every gene
    np.testing.assert_array_equal(out.X[~is_pred], data.X[ctrl])
    # predicted cells: the model's genes as before, the other genes of real control cells
    model = infer_adata(run, data[:, run.genes].copy(), COLUMNS, seed=0)[0]
    np.testing.assert_allclose(out[:, run.genes].X, model.X, rtol=1e-6)
    other = ~out.var["predicted"].to_numpy()
    ctrl_rows = {tuple(r) for r in data.X[ctrl][:, other]}
    assert all(tuple(r) in ctrl_rows for r in out.X[is_pred][:, other])
    # from the control mean: the other genes are the control mean too
    mean_out, _ = infer_adata(run, data, COLUMNS, seed=0, control_mean=True)
    expected = data.X[ctrl][:, other].mean(axis=0)
    np.testing.assert_allclose(
        mean_out.X[is_pred][:, other], np.tile(expected, (is_pred.sum(), 1)), rtol=1e-6
    )
    # a sparse input gives a sparse output with the same values
    sparse = data.copy()
    sparse.X = sp.csr_matrix(sparse.X)
    sparse_out, _ = infer_adata(run, sparse, COLUMNS, seed=0)
    assert sp.issparse(sparse_out.X)
    np.testing.assert_allclose(sparse_out.X.toarray(), out.X, rtol=1e-6)


def test_per_batch_output_takes_other_genes_from_the_plate_controls(trained_run):
    run = load_run(trained_run["run_dir"])
    data = _input(trained_run["adata"])
    data.obs["plate"] = np.where(np.arange(data.n_obs) % 2, "P1", "P2")
    columns = dataclasses.replace(COLUMNS, batch_col="plate")
    other = [g not in run.genes for g in data.var_names]
    for control_mean in (False, True):
        out, _ = infer_adata(run, data, columns, per_batch=True, control_mean=control_mean)
        assert list(out.var_names) == list(data.var_names)
        assert out.var["predicted"].tolist() == [not o for o in other]
        for plate in ("P1", "P2"):
            ctrl = ((data.obs["pert"] == "ctrl") & (data.obs["plate"] == plate)).to_numpy()
            pred = ((out.obs["pert"] == "p3") & (out.obs["plate"] == plate)).to_numpy()
            assert pred.sum() == ((data.obs["pert"] == "p3") & (data.obs["plate"] == plate)).sum()
            got = out.X[pred][:, other]
            if control_mean:
                expected = data.X[ctrl][:, other].mean(axis=0)
                np.testing.assert_allclose(got, np.tile(expected, (len(got), 1)), rtol=1e-6)
            else:
                pool = {tuple(r) for r in data.X[ctrl][:, other]}
                assert all(tuple(r) in pool for r in got)


def test_starts_are_the_control_cells_each_prediction_started_from(trained_run):
    run = load_run(trained_run["run_dir"])
    data_in = _input(trained_run["adata"], extra=False)
    data = split_cells(data_in, run)
    key = ("ds" + CONTEXT_SEP + "C", "ctrl")
    # the control label with the offset subtracted returns each cell's input exactly
    out = predict_cells(run, data, {key: 20}, seed=3, control_offset="subtract")
    assert len(out.starts[key]) == 20 and data.cells["is_control"].iloc[out.starts[key]].all()
    np.testing.assert_allclose(out.cells[key], data.X[out.starts[key]], atol=1e-5)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_cell_eval_runs_on_the_output_against_the_input(trained_run, tmp_path, sparse):
    src, pred = tmp_path / "in.h5ad", tmp_path / "pred.h5ad"
    data = _input(trained_run["adata"])
    data.X = sp.csr_matrix(data.X) if sparse else data.X
    data.write_h5ad(src)
    assert run_cli(_args(trained_run["run_dir"], src, pred, "--seed", "1")) == 0
    written = ad.read_h5ad(pred)
    assert list(written.var_names) == list(data.var_names) and sp.issparse(written.X) == sparse
    assert written.var["predicted"].sum() == 24 and written.var["predicted"].dtype == bool
    outdir = tmp_path / "cell-eval"
    cmd = [sys.executable, "-m", "cell_eval", "run", "-ap", str(pred), "-ar", str(src)]
    cmd += ["--control-pert", "ctrl", "--pert-col", "pert", "--profile", "minimal"]
    cmd += ["--num-threads", "1", "-o", str(outdir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = pd.read_csv(outdir / "results.csv")
    assert "p3" in results.astype(str).to_numpy()


# ---- 4. help and messages ------------------------------------------------------------
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["infer", "train"])
def test_every_option_has_a_help_text_with_its_default(command, capsys):
    sub = _subparsers(build_parser())[command]
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{action.option_strings} has no help"
        text = action.help.lower()
        assert "default" in text or "required" in text, action.option_strings
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    shown = capsys.readouterr().out
    for action in sub._actions:
        assert action.option_strings[-1] in shown
    if command == "infer":
        assert "predicted" in shown and "cell-eval" in shown


def test_unknown_perturbation_names_the_flag(trained_run, src, tmp_path, capsys):
    wanted = tmp_path / "wanted.txt"
    wanted.write_text("NOVEL\n")
    out = tmp_path / "pred.h5ad"
    rc = run_cli(_args(trained_run["run_dir"], src, out, "--perturbations", str(wanted)))
    err = capsys.readouterr().err
    assert rc == 2 and "NOVEL" in err and "--allow-unknown" in err
    assert not out.exists()
    rc = run_cli(
        _args(trained_run["run_dir"], src, out, "--perturbations", str(wanted), "--allow-unknown")
    )
    assert rc == 0 and out.is_file()
