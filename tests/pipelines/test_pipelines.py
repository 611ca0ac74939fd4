"""Pipelines: the registry, and slices run with SequentialRunner on in-memory catalogs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from kedro.framework.project import configure_project
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from perturbflow.datasets import RunsDataset, WorkFolderDataset, read_h5ad_cells
from perturbflow.models.inference.predict import predict_heldout
from perturbflow.params import (
    KnockdownParams,
    PreprocessingParams,
    SplitsParams,
    SplitSpec,
)
from perturbflow.pipeline_registry import register_pipelines
from perturbflow.pipelines.evaluation import create_pipeline as evaluation_pipeline
from perturbflow.pipelines.preprocessing import create_pipeline as preprocessing_pipeline
from perturbflow.pipelines.splits import create_pipeline as splits_pipeline
from perturbflow.pipelines.training import create_pipeline as training_pipeline
from tests.models.support import (
    CONTEXTS,
    N_GENES,
    loader_params,
    make_split,
    planted_effects,
    training_params,
    write_screen,
)
from tests.support import PERTURBENCH_COLUMNS
from tests.synthetic import COLUMNS, evaluation_params, make_screen, split_table


class KeptDataset(MemoryDataset):
    """A MemoryDataset the runner cannot release, so a test can read intermediate data."""

    def _release(self) -> None:
        pass


def _catalog(datasets: dict) -> DataCatalog:
    return DataCatalog(
        {name: MemoryDataset(value, copy_mode="assign") for name, value in datasets.items()}
    )


def test_registry_has_every_pipeline_and_default_chains_four():
    configure_project("perturbflow")
    pipelines = register_pipelines()
    names = {"preprocessing", "splits", "training", "evaluation", "merge", "__default__"}
    assert names <= set(pipelines)
    default = {n.name for n in pipelines["__default__"].nodes}
    assert {
        "preprocess",
        "build_split_table",
        "train_st_models",
        "predict_st",
        "predict_baselines",
        "score_predictions",
    } <= default
    assert "merge_screens" not in default


def test_evaluation_pipeline_on_generated_screen(tmp_path):
    rng = np.random.default_rng(0)
    n_genes = 30
    specific = {f"p{i}": rng.normal(0, 0.6, n_genes) for i in range(4)}
    effects = {(c, p): d for c in ("A", "B", "C") for p, d in specific.items()}
    adata = make_screen(effects, n_genes=n_genes, contexts=["A", "B", "C"], noise=0.2)
    table = split_table(adata, {"zs": {("C", "*"): "test", ("B", "p3"): "val"}})
    adata.write_h5ad(tmp_path / "screen.h5ad")  # the pipeline reads the file by rows
    catalog = _catalog(
        {
            "preprocessed_adata@cells": read_h5ad_cells(tmp_path / "screen.h5ad"),
            "split_table": table,
            "hvg_genes": list(adata.var_names),
            "params:columns": COLUMNS,
            "params:evaluation": evaluation_params(),
            "params:loader": loader_params(),
            "model_predictions": {},  # no model trained: the baselines alone are scored
            "finetuned_predictions": {},
            "model_validation_scores": {},
            "finetuned_validation_scores": {},
        }
    )
    pipeline = evaluation_pipeline()
    for name in pipeline.outputs() | {"metrics", "baseline_predictions", "heldout_real"}:
        catalog[name] = KeptDataset(copy_mode="assign")
    SequentialRunner().run(pipeline, catalog)
    outputs = catalog
    metrics = outputs["metrics"].load()
    assert list(metrics["predictor"]) == [
        "control",
        "perturbation_mean",
        "context_mean",
        "linear",
        "perturbflow",
        "ceiling",
    ]
    by = metrics.set_index("predictor")
    # perturbflow is the candidate best on the validation perturbation: here the planted
    # shared effect makes context_mean exact, and its test figures are context_mean's
    selection = outputs["perturbflow_selection"].load().set_index("predictor")
    assert selection["chosen"].sum() == 1 and selection.loc["context_mean", "chosen"]
    assert "control" not in selection.index
    assert by.loc["perturbflow", "pearson_delta"] == by.loc["context_mean", "pearson_delta"]
    assert by.loc["context_mean", "pearson_delta"] > 0.9  # planted: same effect everywhere
    assert by.loc["context_mean", "pearson_delta"] > by.loc["perturbation_mean", "pearson_delta"]
    assert by.loc["perturbation_mean", "score_vs_perturbation_mean"] == 0.0
    assert "| zs" in outputs["metrics_table"].load()
    sources = outputs["prediction_sources"].load()
    assert set(sources.loc[sources["predictor"] == "linear", "source"]) == {"other_contexts"}
    chosen = sources.loc[sources["predictor"] == "perturbflow", "source"]
    assert len(chosen) and all(s.startswith("context_mean:") for s in chosen)
    assert outputs["linear_baseline_selection"].load()["zs"]["n_validation_perturbations"] == 1
    predictions = outputs["baseline_predictions"].load()
    assert set(predictions) == {
        f"zs/{p}" for p in ("control", "perturbation_mean", "context_mean", "linear")
    }
    assert outputs["predicted_vs_real_plot"].load().data


def test_preprocessing_and_splits_on_real_perturbench(perturbench, project_root: Path, monkeypatch):
    monkeypatch.chdir(project_root)  # split TOML paths are relative to the project root
    preprocessing = PreprocessingParams(
        expected_input="auto",
        target_sum=None,
        n_top_genes=100,
        hvg_flavor="seurat",
        knockdown=KnockdownParams(
            enabled=True,
            target_col=None,
            type_col="perturbation_type",
            knockdown_types=["CRISPRi"],
            residual_expression=0.3,
            cell_residual_expression=0.5,
            min_cells=30,
        ),
    )
    splits = SplitsParams(
        splits={
            "fewshot": SplitSpec(
                toml="conf/base/splits/fewshot.toml", training={}, zeroshot={}, fewshot={}
            ),
            "inline": SplitSpec(
                toml=None, training={}, zeroshot={"mcfaline23.A172": "test"}, fewshot={}
            ),
        }
    )
    catalog = _catalog(
        {
            "raw_adata": perturbench,
            "params:columns": PERTURBENCH_COLUMNS,
            "params:preprocessing": preprocessing,
        }
    )
    outputs = SequentialRunner().run(preprocessing_pipeline(), catalog)
    processed = outputs["preprocessed_adata@anndata"].load()
    hvg = outputs["hvg_genes"].load()
    assert processed.obsm["X_hvg"].shape == (processed.n_obs, 100) and len(hvg) == 100
    report = outputs["preprocessing_summary"].load()
    assert isinstance(report, pd.DataFrame) and "reason" in report.columns
    # the splits node reads the backed twin of the same file; in memory it is the same object
    split_catalog = _catalog(
        {
            "preprocessed_adata@cells": processed,
            "params:columns": PERTURBENCH_COLUMNS,
            "params:splits": splits,
        }
    )
    split_outputs = SequentialRunner().run(splits_pipeline(), split_catalog)
    table = split_outputs["split_table"].load()
    assert set(table.columns) >= {
        "fewshot",
        "inline",
        "dataset",
        "celltype",
        "perturbation",
        "is_control",
    }
    assert (table.loc[table["celltype"] == "A172", "inline"] == "test").all()
    assert table.index.equals(processed.obs_names)
    summary = split_outputs["split_summary"].load()
    assert set(summary["split_name"]) == {"fewshot", "inline"}


def _run_training_pipeline(tmp_path: Path, training) -> tuple[DataCatalog, object, pd.DataFrame]:
    """The training pipeline on the planted screen (test key (C, p3), validation (B, p2)).

    Returns the catalog (outputs kept), the screen and its split table.
    """
    adata = make_screen(planted_effects(), n_genes=N_GENES, contexts=CONTEXTS, noise=0.15)
    table = split_table(adata, {"zs": {("C", "p3"): "test", ("B", "p2"): "val"}})
    write_screen(adata, tmp_path / "screen.h5ad")
    catalog = _catalog(
        {
            "preprocessed_adata@cells": read_h5ad_cells(tmp_path / "screen.h5ad"),
            "split_table": table,
            "hvg_genes": list(adata.var_names),
            "params:columns": COLUMNS,
            "params:loader": loader_params(),
            "params:training": training,
            "params:evaluation": evaluation_params(),
        }
    )
    catalog["st_training"] = WorkFolderDataset(path=str(tmp_path / "st_training"))
    catalog["st_models"] = RunsDataset(path=str(tmp_path / "st"))
    pipeline = training_pipeline()
    for name in pipeline.outputs() - {"st_models"}:
        catalog[name] = KeptDataset(copy_mode="assign")
    SequentialRunner().run(pipeline, catalog)
    return catalog, adata, table


def test_training_pipeline_saves_its_models_to_the_store_and_predicts_from_it(tmp_path):
    catalog, _, _ = _run_training_pipeline(
        tmp_path, training_params(max_steps=8, val_every_n_steps=4)
    )
    model = tmp_path / "st" / "zs"
    assert (model / "model.pt").is_file() and not (model / "checkpoints").exists()
    assert (tmp_path / "st_training" / "zs" / "checkpoints" / "last.ckpt").is_file()
    predictions = catalog["model_predictions"].load()
    assert list(predictions) == ["zs/st"]
    assert set(predictions["zs/st"].obs["pert"]) == {"ctrl", "p3"}
    assert catalog["st_quality"].load()["zs"]["run_dir"] == str(model)  # read from the store


def test_training_pipeline_ensemble_averages_its_networks(tmp_path):
    training = training_params(max_steps=8, val_every_n_steps=4, ensemble=2, seed=5)
    catalog, adata, table = _run_training_pipeline(tmp_path, training)
    store = catalog["st_models"].load()
    assert sorted(store) == ["zs", "zs.seed6"]
    assert [store[k].config["training"]["seed"] for k in ("zs", "zs.seed6")] == [5, 6]
    # the pipeline's prediction is the mean of the two networks' from the same controls
    data = make_split(adata, tmp_path / "screen.h5ad", table, "zs").data
    seed = evaluation_params().seed
    members = [predict_heldout(store[k], data, COLUMNS, seed=seed)[0] for k in sorted(store)]
    predicted = catalog["model_predictions"].load()["zs/st"]
    perturbed = (predicted.obs["pert"] != "ctrl").to_numpy()
    assert np.abs(members[0].X[perturbed] - members[1].X[perturbed]).max() > 1e-3
    np.testing.assert_allclose(
        predicted.X[perturbed], (members[0].X[perturbed] + members[1].X[perturbed]) / 2, atol=1e-5
    )
    assert set(catalog["st_prediction_sources"].load()["networks"]) == {2}
    assert catalog["st_quality"].load()["zs"]["ensemble"] == [
        str(tmp_path / "st" / "zs"),
        str(tmp_path / "st" / "zs.seed6"),
    ]
