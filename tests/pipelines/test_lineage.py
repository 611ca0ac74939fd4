"""The Kedro graph tells what the code does: models are datasets between the pipelines.

``kedro viz`` draws what these assert: every model store between the pipeline that makes
it and those that use it, every catalog dataset read or written by some pipeline, and no
parameter holding a path to the project's own outputs (those are catalog entries).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from kedro.config import OmegaConfigLoader
from kedro.framework.project import configure_project

from perturbflow.pipeline_registry import register_pipelines
from perturbflow.settings import CONFIG_LOADER_ARGS
from tests.support import PROJECT_ROOT

# dataset -> (the pipeline that writes it, the pipelines that read it)
LINEAGE = {
    "st_models": ("training", {"training", "finetuning", "adaptation", "tune"}),
    "finetuned_models": ("finetuning", {"finetuning"}),
    "model_predictions": ("training", {"evaluation"}),
    "model_validation_scores": ("training", {"evaluation"}),
    "finetuned_validation_scores": ("finetuning", {"evaluation"}),
    "finetuned_predictions": ("finetuning", {"evaluation"}),
    "mmd_shifts": ("adaptation", {"adaptation"}),
    "merged_raw_adata": ("merge", {"merge"}),
    "split_table": ("splits", {"training", "finetuning", "tune", "evaluation"}),
}
# read by a pipeline, written by the node itself as it goes (resume), never by the runner
WORK_FOLDERS = {
    "st_training": "training",
    "finetuning_training": "finetuning",
    "tune_storage": "tune",
    "pairing_cache": "pairing_diagnostic",
}
# a path of the project's outputs: the output root or a data layer folder
OWN_OUTPUT = re.compile(r"output_root|(^|/)0[2-8]_[a-z_]+(/|$)")


@pytest.fixture(scope="module")
def pipelines():
    configure_project("perturbflow")
    return {k: v for k, v in register_pipelines().items() if k != "__default__"}


def _makers(pipelines, dataset: str) -> set[str]:
    return {name for name, p in pipelines.items() if dataset in p.all_outputs()}


def _users(pipelines, dataset: str) -> set[str]:
    return {name for name, p in pipelines.items() if dataset in p.all_inputs()}


@pytest.mark.parametrize("dataset", sorted(LINEAGE))
def test_models_and_predictions_sit_between_their_pipelines(pipelines, dataset):
    maker, users = LINEAGE[dataset]
    assert _makers(pipelines, dataset) == {maker}
    assert _users(pipelines, dataset) == users


def test_work_folders_are_inputs_of_the_pipeline_that_works_in_them(pipelines):
    for dataset, user in WORK_FOLDERS.items():
        assert _users(pipelines, dataset) == {user} and not _makers(pipelines, dataset)


def test_every_catalog_dataset_is_read_or_written_by_a_pipeline(pipelines):
    loader = OmegaConfigLoader(conf_source=str(PROJECT_ROOT / "conf"), **CONFIG_LOADER_ARGS)
    used = set().union(*(p.datasets() for p in pipelines.values()))
    assert set(loader["catalog"]) - used == set()


def _strings(tree, where: str):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _strings(value, f"{where}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _strings(value, f"{where}[{i}]")
    elif isinstance(tree, str):
        yield where, tree


def test_no_parameter_is_a_path_to_the_projects_own_outputs():
    files = sorted((PROJECT_ROOT / "conf").glob("*/parameters*.yml"))
    assert len(files) > 10
    offending = [
        f"{Path(f).relative_to(PROJECT_ROOT)}: {key} = {value}"
        for f in files
        for key, value in _strings(yaml.safe_load(Path(f).read_text()) or {}, "")
        if OWN_OUTPUT.search(value)
    ]
    assert offending == []


def test_the_merge_pipeline_preprocesses_what_it_merged(pipelines):
    merge = pipelines["merge"]
    assert {n.name for n in merge.nodes} == {"merge_screens", "merged.preprocess"}
    assert merge.inputs() == {"raw_partitions", "params:columns", "params:preprocessing"}
    assert "preprocessed_adata@anndata" in merge.outputs()


def test_the_architecture_page_shows_the_current_graph():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lineage", PROJECT_ROOT / "docs/lineage.py")
    lineage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lineage)
    page = (PROJECT_ROOT / "docs/architecture.md").read_text()
    assert lineage.embedded(page) == lineage.mermaid(), "rerun: python docs/lineage.py"
