"""The ``adaptation`` pipeline on an in-memory catalog, and its configuration files."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import yaml
from kedro.framework.project import configure_project
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from matplotlib.figure import Figure

from perturbflow.adaptation import (
    AdaptationParams,
    AdaptationSourceParams,
    AdaptationTargetParams,
    AdaptedPredictionParams,
    PerturbationListParams,
    load_shift,
)
from perturbflow.commands import load_params
from perturbflow.datasets import RunsDataset, ShiftsDataset
from perturbflow.params import ColumnsParams
from perturbflow.pipeline_registry import register_pipelines
from perturbflow.pipelines.adaptation import create_pipeline
from tests.adaptation.support import cells_adata, control_cloud, fit_params, write
from tests.support import PROJECT_ROOT
from tests.synthetic import COLUMNS


class KeptDataset(MemoryDataset):
    """A MemoryDataset the runner cannot release, so the test can read it afterwards."""

    def _release(self) -> None:
        pass


def test_pipeline_fits_saves_and_predicts(run, adapt_run, tmp_path):
    adata = adapt_run["adata"]
    # source: two files of context C controls (a glob); target: C's controls shifted, plus p3
    for i in range(2):
        src = cells_adata(control_cloud(adata, "C", 150, seed=i), run.genes, context="C")
        write(src, tmp_path / "source" / f"part{i}.h5ad")
    target_ctrl = cells_adata(control_cloud(adata, "C", 200, seed=5) - 0.3, run.genes, context="T")
    target_p3 = cells_adata(
        control_cloud(adata, "C", 40, seed=6), run.genes, context="T", pert="p3"
    )
    other = cells_adata(control_cloud(adata, "A", 30, seed=7), run.genes, context="A")
    write(ad.concat([target_ctrl, target_p3, other]), tmp_path / "target.h5ad")
    perts = tmp_path / "perts.csv"
    pd.DataFrame({"gene": ["p3", "p1"]}).to_csv(perts, index=False)
    params = AdaptationParams(
        run=adapt_run["run_dir"].name,
        name="T-shift",
        control_label=None,
        source=AdaptationSourceParams(
            files=str(tmp_path / "source" / "*.h5ad"), celltypes=None, max_cells_per_file=None
        ),
        target=AdaptationTargetParams(file=str(tmp_path / "target.h5ad"), celltype="T"),
        perturbations=PerturbationListParams(file=str(perts), column="gene"),
        fit=fit_params(max_steps=60, eval_every=10),
        predict=AdaptedPredictionParams(
            cells_per_perturbation=None, allow_unknown=False, map_back=True, seed=0
        ),
        chunk_size=64,
        device="cpu",
    )
    outputs = [
        "adaptation_summary",
        "adaptation_mmd_curve",
        "adaptation_mmd_plot",
        "adapted_predictions",
        "adapted_prediction_means",
        "adapted_prediction_sources",
    ]
    shifts = ShiftsDataset(path=str(tmp_path / "shifts"))
    catalog = DataCatalog(
        {
            # the run's folder is a store of one run; the shift goes through the real store
            "st_models": RunsDataset(path=str(adapt_run["run_dir"].parent)),
            "mmd_shifts": shifts,
            "preprocessed_adata@cells": MemoryDataset(None),  # files named in params instead
            "params:adaptation": MemoryDataset(params, copy_mode="assign"),
            "params:columns": MemoryDataset(COLUMNS, copy_mode="assign"),
            **{name: KeptDataset(copy_mode="assign") for name in outputs},
        }
    )
    SequentialRunner().run(create_pipeline(), catalog)
    summary = catalog["adaptation_summary"].load()
    json.dumps(summary)  # the JSON dataset can write it
    assert summary["n_source_embeddings"] == 300
    assert summary["n_target_controls"] == 200
    assert [f["n_controls"] for f in summary["source_files"]] == [150, 150]
    assert summary["mmd2_after"] < summary["mmd2_before"]
    curve = catalog["adaptation_mmd_curve"].load()
    assert list(curve.columns) == ["step", "eval_mmd2", "batch_mmd2"]
    assert isinstance(catalog["adaptation_mmd_plot"].load(), Figure)
    shift, meta = load_shift(tmp_path / "shifts" / "T-shift", run)
    assert meta["target_celltype"] == "T" and meta["name"] == "T-shift"
    assert shifts.load()["T-shift"].check_run(run) is not None
    pred = catalog["adapted_predictions"].load()
    assert set(pred.obs["celltype"]) == {"T"}
    assert pred.obs["pert"].value_counts().to_dict() == {"ctrl": 200, "p3": 40, "p1": 200}
    means = catalog["adapted_prediction_means"].load()
    assert means["perturbation"].tolist() == ["p3", "p1"]
    assert catalog["adapted_prediction_sources"].load()["perturbation"].tolist() == ["p3", "p1"]
    assert np.isfinite(pred.X).all() and (pred.X >= 0).all()


def test_conf_parses_into_the_typed_params_and_the_catalog_has_every_dataset():
    for env in ("base", "test"):
        params = load_params(str(PROJECT_ROOT / "conf"), env, [])
        typed = AdaptationParams(**params["adaptation"])
        ColumnsParams(**params["columns"])
        assert typed.target.celltype == "A172"
    assert (
        AdaptationParams(
            **load_params(str(PROJECT_ROOT / "conf"), "test", [])["adaptation"]
        ).fit.max_steps
        == 30
    )
    catalog = yaml.safe_load((PROJECT_ROOT / "conf/base/catalog_adaptation.yml").read_text())
    names = {d for d in create_pipeline().datasets() if not d.startswith("params:")}
    assert names - {"st_models", "preprocessed_adata@cells"} == set(catalog)
    base = AdaptationParams(**load_params(str(PROJECT_ROOT / "conf"), "base", [])["adaptation"])
    assert base.source.files is None and base.target.file is None  # the preprocessed screen


def test_registry_has_the_adaptation_pipeline_outside_the_default():
    configure_project("perturbflow")
    pipelines = register_pipelines()
    assert "adaptation" in pipelines
    default = {n.name for n in pipelines["__default__"].nodes}
    assert "fit_mmd_shift" in {n.name for n in pipelines["adaptation"].nodes}
    assert "fit_mmd_shift" not in default
