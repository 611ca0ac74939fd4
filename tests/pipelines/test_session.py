"""KedroSession runs on a copy of the project: what `kedro run --env test` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project


def _run(root: Path, *, env: str = "test", pipeline: str = "__default__") -> None:
    bootstrap_project(root)
    with KedroSession.create(project_path=root, env=env) as session:
        session.run(pipeline_name=pipeline)


def test_default_pipeline_on_test_env(project_copy: Path):
    _run(project_copy)
    reporting = project_copy / "data" / "08_reporting"
    metrics = pd.read_csv(reporting / "metrics.csv")
    assert set(metrics["split"]) == {"fewshot", "zeroshot"}
    assert list(metrics.loc[metrics["split"] == "fewshot", "predictor"]) == [
        "control",
        "perturbation_mean",
        "context_mean",
        "linear",
        "st",
        "perturbflow",
    ]
    assert metrics.loc[metrics["predictor"] == "st", "pearson_delta"].notna().all()
    # perturbflow: per split the candidate best on validation, the ST model among them
    selection = pd.read_csv(reporting / "perturbflow_selection.csv")
    assert set(selection["split"]) == {"fewshot", "zeroshot"}
    assert (selection.groupby("split")["chosen"].sum() == 1).all()
    fewshot = selection[selection["split"] == "fewshot"].set_index("predictor")
    assert fewshot.loc["st", "n_validation"] == 4  # the TOML's four validation perturbations
    chosen = fewshot.index[fewshot["chosen"]][0]
    by = metrics[metrics["split"] == "fewshot"].set_index("predictor")["pearson_delta"]
    assert by["perturbflow"] == by[chosen]
    assert (project_copy / "data/06_models/st/fewshot/response_prior.json").is_file()
    models = project_copy / "data/06_models/st"  # the st_models store: one run per split
    runs = {d.name: json.loads((d / "run.json").read_text()) for d in models.iterdir()}
    assert set(runs) == {"fewshot", "zeroshot"}
    assert all(r["status"] == "finished" and r["steps"] == 12 for r in runs.values())
    assert (models / "fewshot/model.pt").is_file() and (models / "fewshot/logs").is_dir()
    assert not (models / "fewshot/checkpoints").exists()  # they stay in the work folder
    assert (project_copy / "data/06_models/st_training/fewshot/checkpoints/last.ckpt").is_file()
    st = ad.read_h5ad(project_copy / "data/07_model_output/model_predictions/fewshot/st.h5ad")
    variability = pd.read_csv(reporting / "prediction_variability.csv")
    assert set(variability["predictor"]) >= {"st", "linear"}
    quality = json.loads((reporting / "st_quality.json").read_text())
    assert set(quality) == {"fewshot", "zeroshot"}
    sources = pd.read_csv(reporting / "st_prediction_sources.csv")
    assert len(sources.query("split == 'fewshot'")) == 8
    for column in (
        "pearson_delta",
        "mse",
        "mae",
        "discrimination_score_l1",
        "overlap_at_N",
        "precision_at_N",
        "score_vs_perturbation_mean",
    ):
        assert column in metrics.columns
    assert metrics.loc[metrics["predictor"] == "perturbation_mean", "pearson_delta"].notna().all()
    assert (reporting / "metrics.md").read_text().startswith("| split")
    for name in ("metrics_comparison.json", "predicted_vs_real.json", "preprocessing_report.json"):
        assert (reporting / name).stat().st_size > 0
    pred = ad.read_h5ad(project_copy / "data/07_model_output/predictions/fewshot/linear.h5ad")
    real = ad.read_h5ad(project_copy / "data/07_model_output/real/fewshot.h5ad")
    assert list(pred.var_names) == list(real.var_names) == list(st.var_names)
    assert (
        st.obs["condition"]
        .value_counts()
        .sort_index()
        .equals(real.obs["condition"].value_counts().sort_index())
    )
    assert (
        pred.obs["condition"]
        .value_counts()
        .sort_index()
        .equals(real.obs["condition"].value_counts().sort_index())
    )
    assert "control" in set(pred.obs["condition"])
    hvg = pd.read_json(project_copy / "data/02_intermediate/hvg_genes.json", typ="series")
    assert len(hvg) == 200  # conf/test overrides n_top_genes


def test_unknown_parameter_key_fails_before_the_run(project_copy: Path):
    (project_copy / "conf" / "local" / "parameters_evaluation.yml").write_text(
        "evaluation:\n  profle: full\n"
    )
    with pytest.raises(Exception, match=r"(?s)Parameter validation failed.*profle"):
        _run(project_copy, env="local")
    assert not (project_copy / "data" / "02_intermediate" / "preprocessed.h5ad").exists()


def test_merge_pipeline(project_copy: Path, perturbench: ad.AnnData):
    folder = project_copy / "data" / "01_raw" / "to_merge"
    folder.mkdir()
    perturbench.write_h5ad(folder / "perturbench.h5ad")
    extra = perturbench[perturbench.obs["cell_type"] == "A172"].copy()
    del extra.obs["dataset"]
    extra.write_h5ad(folder / "extra.h5ad")
    _run(project_copy, pipeline="merge")
    merged = ad.read_h5ad(project_copy / "data" / "02_intermediate" / "merged_raw.h5ad")
    assert merged.n_obs == perturbench.n_obs + extra.n_obs
    assert set(merged.obs["dataset"]) == {"norman19", "mcfaline23", "extra"}
    assert merged.obs_names.is_unique
    # the same run preprocessed the merged screen (merged.preprocess), ready for the splits
    preprocessed = ad.read_h5ad(project_copy / "data/02_intermediate/preprocessed.h5ad", "r")
    assert set(preprocessed.obs["dataset"]) == {"norman19", "mcfaline23", "extra"}
    assert "X_hvg" in preprocessed.obsm
    preprocessed.file.close()


def test_kedro_viz_build(project_copy: Path):
    """`kedro viz build --include-previews` (the README's command) exports lineage and plots."""
    import plotly.graph_objects as go

    reporting = project_copy / "data" / "08_reporting"
    reporting.mkdir(parents=True)
    figure = go.Figure(go.Bar(x=["st"], y=[0.6]))
    (reporting / "metrics_comparison.json").write_text(figure.to_json())
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "kedro", "viz", "build", "--include-previews"],
        cwd=project_copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    main = json.loads((project_copy / "build" / "api" / "main").read_text())
    names = {node["name"] for node in main["nodes"]}
    assert {"preprocess", "predict_baselines", "score_predictions", "metrics"} <= names
    layers = set(main.get("layers", []))
    assert {"raw", "intermediate", "primary", "models", "model_output", "reporting"} <= layers
    # the trained models are a dataset between the node that trains and the one that predicts
    ids = {node["name"]: node["id"] for node in main["nodes"]}
    edges = {(edge["source"], edge["target"]) for edge in main["edges"]}
    assert (ids["train_st_models"], ids["st_models"]) in edges
    assert (ids["st_models"], ids["predict_st"]) in edges
    # the plot is in the site (kedro-viz drops every preview without --include-previews)
    (plot,) = [n["id"] for n in main["nodes"] if n["name"] == "metrics_comparison_plot"]
    details = json.loads((project_copy / "build" / "api" / "nodes" / plot).read_text())
    assert details["preview_type"] == "PlotlyPreview"
    assert details["preview"]["data"][0]["y"] == [0.6]


def test_pairing_diagnostic_caches_by_content(project_copy: Path):
    _run(project_copy, pipeline="preprocessing")
    _run(project_copy, pipeline="pairing_diagnostic")
    feature = project_copy / "data" / "04_feature"
    index = pd.read_parquet(feature / "pairing_index.parquet")
    stats = json.loads((project_copy / "data/08_reporting/pairing_stats.json").read_text())
    assert stats["strategy"] == "random" and stats["n_pairs"] == len(index) == 5561
    # random pairing: every control is a control cell of the same context
    adata = ad.read_h5ad(project_copy / "data/02_intermediate/preprocessed.h5ad", backed="r")
    obs = adata.obs
    assert (obs.loc[index["control"], "condition"] == "control").all()
    ctx = obs["dataset"].astype(str) + "." + obs["cell_type"].astype(str)
    assert (ctx.loc[index["control"]].to_numpy() == index["context"].astype(str).to_numpy()).all()
    adata.file.close()
    cached = sorted((feature / "pairing_cache").glob("*.npz"))
    assert len(cached) == 1
    # the encodings are JSON documents (no pickles)
    celltypes = json.loads((feature / "celltype_map.json").read_text())
    assert sorted(celltypes["index"]) == ["A172", "T98G", "U87MG", "k562"]
    assert json.loads((feature / "batch_map.json").read_text()) == {"index": {}}
    encoder = json.loads((feature / "perturbation_encoder.json").read_text())
    assert "KLF1" in encoder["vocabulary"] and "KLF1+MAP2K6" not in encoder["vocabulary"]

    _run(project_copy, pipeline="pairing_diagnostic")  # same file, params, seed: a cache hit
    again = json.loads((project_copy / "data/08_reporting/pairing_stats.json").read_text())
    assert again["cache_key"] == stats["cache_key"]
    assert len(list((feature / "pairing_cache").glob("*.npz"))) == 1

    # a changed file never reuses the stale pairing
    (project_copy / "conf" / "test" / "parameters_preprocessing.yml").write_text(
        "preprocessing:\n  n_top_genes: 150\n"
    )
    _run(project_copy, pipeline="preprocessing")
    _run(project_copy, pipeline="pairing_diagnostic")
    changed = json.loads((project_copy / "data/08_reporting/pairing_stats.json").read_text())
    assert changed["cache_key"] != stats["cache_key"]
    assert len(list((feature / "pairing_cache").glob("*.npz"))) == 2
