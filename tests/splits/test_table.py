"""Per-cell split tables on a generated obs table with a known answer, and their errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perturbflow.exceptions import InputError
from perturbflow.params import ColumnsParams, SplitsParams, SplitSpec
from perturbflow.splits import SplitConfig, build_split_table, split_table_from_params
from perturbflow.splits.data import split_design
from tests.synthetic import COLUMNS as SYNTHETIC_COLUMNS

COLUMNS = SYNTHETIC_COLUMNS  # dataset_name is unused: dataset_col is set
CONTEXTS = {"A": ["a1", "a2"], "B": ["b1", "b2"], "C": ["c1"]}
PERTS = ["ctrl", "P1", "P2", "P3"]


@pytest.fixture
def obs() -> pd.DataFrame:
    """Two cells of every perturbation (and control) in every context."""
    rows = [
        (ds, ct, pert)
        for ds, cts in CONTEXTS.items()
        for ct in cts
        for pert in PERTS
        for _ in range(2)
    ]
    frame = pd.DataFrame(rows, columns=["dataset", "celltype", "pert"]).astype("category")
    frame.index = [f"cell{i}" for i in range(len(frame))]
    return frame


def _labels(table: pd.DataFrame, obs: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """The single label of each (dataset, celltype, perturbation) group."""
    keys = obs[["dataset", "celltype", "pert"]].astype(str)
    grouped = table["split"].astype(str).groupby([keys["dataset"], keys["celltype"], keys["pert"]])
    assert (grouped.nunique() == 1).all()
    return grouped.first().to_dict()


def test_precedence_training_zeroshot_fewshot(obs: pd.DataFrame) -> None:
    config = SplitConfig(
        training={"A": "train"},
        zeroshot={("A", "a2"): "test", ("B", "b1"): "val"},
        fewshot={
            ("A", "a1"): {"val": ["P1"], "test": ["P2"]},
            ("B", "b2"): {"val": [], "test": ["P3"]},
        },
        source="t",
    )
    table = build_split_table(obs, config, COLUMNS)
    assert list(table.columns) == ["dataset", "celltype", "perturbation", "is_control", "split"]
    assert table.index.equals(obs.index)
    assert list(table["split"].cat.categories) == ["train", "val", "test", "unused"]
    expected = {}
    for pert in PERTS:
        expected["A", "a1", pert] = {"P1": "val", "P2": "test"}.get(pert, "train")
        expected["A", "a2", pert] = "test"  # zero-shot beats training, controls included
        expected["B", "b1", pert] = "val"  # zero-shot in a dataset that does not train
        expected["B", "b2", pert] = "test" if pert == "P3" else "train"  # few-shot trains
        expected["C", "c1", pert] = "unused"
    assert _labels(table, obs) == expected
    assert table["is_control"].sum() == 2 * 5
    assert table["is_control"].dtype == bool


def test_empty_training_means_every_dataset_trains(obs: pd.DataFrame) -> None:
    config = SplitConfig(zeroshot={("C", "c1"): "test"}, source="t")
    labels = _labels(build_split_table(obs, config, COLUMNS), obs)
    assert {k: v for k, v in labels.items() if v != "train"} == {
        ("C", "c1", p): "test" for p in PERTS
    }
    declared = SplitConfig(datasets={"A": [], "B": []}, zeroshot={("B", "b1"): "test"}, source="t")
    labels = _labels(build_split_table(obs, declared, COLUMNS), obs)
    assert labels["A", "a1", "P1"] == "train"
    assert labels["B", "b1", "P1"] == "test"
    assert labels["C", "c1", "P1"] == "unused"  # not declared in [datasets]


def test_a_split_without_test_perturbations_is_refused(obs: pd.DataFrame) -> None:
    config = SplitConfig(zeroshot={("B", "b1"): "val"}, source="conf/x.toml")
    with pytest.raises(InputError, match=r"conf/x.toml: no perturbed cell is labelled test"):
        build_split_table(obs, config, COLUMNS)


def test_dataset_name_when_no_dataset_column(obs: pd.DataFrame) -> None:
    columns = ColumnsParams(**{**COLUMNS.__dict__, "dataset_col": None, "dataset_name": "screen"})
    config = SplitConfig(zeroshot={("screen", "c1"): "test"}, source="t")
    table = build_split_table(obs, config, columns)
    assert set(table["dataset"]) == {"screen"}
    assert (table.loc[obs["celltype"] == "c1", "split"] == "test").all()
    with pytest.raises(InputError, match=r"dataset 'A' is not in the data.*dataset_col is null"):
        build_split_table(obs, SplitConfig(training={"A": "train"}, source="t"), columns)


@pytest.mark.parametrize(
    ("config", "pattern"),
    [
        (
            SplitConfig(training={"AA": "train"}, source="s.toml"),
            r"s\.toml: dataset 'AA' is not in the data; datasets from obs column 'dataset': "
            r"\['A', 'B', 'C'\]\. Did you mean 'A'",
        ),
        (
            SplitConfig(zeroshot={("A", "a3"): "test"}, source="s.toml"),
            r"cell type 'a3' of context 'A\.a3' is not in dataset 'A'; "
            r"its cell types .*\['a1', 'a2'\]\. Did you mean",
        ),
        (
            SplitConfig(fewshot={("A", "a1"): {"val": [], "test": ["P4"]}}, source="s.toml"),
            r"\[fewshot\.\"A\.a1\"\]\.test: perturbation 'P4' is not in the data.*'P1'",
        ),
        (
            SplitConfig(fewshot={("A", "a1"): {"val": ["ctrl"], "test": []}}, source="s.toml"),
            r"\[fewshot\.\"A\.a1\"\]\.val lists the control label 'ctrl'",
        ),
        (
            SplitConfig(
                training={"A": "train"},
                zeroshot={("A", "a1"): "test", ("A", "a2"): "val"},
                source="s.toml",
            ),
            r"no cell is labelled train",
        ),
    ],
)
def test_errors(obs: pd.DataFrame, config: SplitConfig, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        build_split_table(obs, config, COLUMNS)


def test_perturbation_absent_from_context(obs: pd.DataFrame) -> None:
    obs = obs[~((obs["celltype"] == "a1") & obs["pert"].isin(["P2", "P3"]))]
    config = SplitConfig(fewshot={("A", "a1"): {"val": [], "test": ["P2", "P3"]}}, source="s")
    with pytest.raises(
        InputError,
        match=r"\[fewshot\.\"A\.a1\"\]\.test would be empty: \['P2', 'P3'\] have no cells in "
        r"context 'A\.a1' \(they occur in \['A\.a2', 'B\.b1'",
    ):
        build_split_table(obs, config, COLUMNS)
    config = SplitConfig(fewshot={("A", "a1"): {"val": [], "test": ["P1", "P2"]}}, source="s")
    with pytest.raises(InputError, match=r"\.test \['P2'\] have no cells in context 'A\.a1'"):
        build_split_table(obs, config, COLUMNS)


def test_zeroshot_context_with_only_controls(obs: pd.DataFrame) -> None:
    obs = obs[(obs["celltype"] != "c1") | (obs["pert"] == "ctrl")]
    config = SplitConfig(zeroshot={("C", "c1"): "test"}, source="s")
    with pytest.raises(InputError, match=r"test split of context 'C\.c1' has no perturbed cell"):
        build_split_table(obs, config, COLUMNS)


def test_obs_errors(obs: pd.DataFrame) -> None:
    config = SplitConfig(source="s")
    with pytest.raises(
        InputError, match=r"no column 'celltype' \(columns.celltype_col\).*Did you mean 'celltyp'"
    ):
        build_split_table(obs.rename(columns={"celltype": "celltyp"}), config, COLUMNS)
    bad = ColumnsParams(**{**COLUMNS.__dict__, "control_label": "Ctrl"})
    with pytest.raises(InputError, match=r"Control label 'Ctrl'.*never occurs.*'ctrl'"):
        build_split_table(obs, config, bad)
    with pytest.raises(InputError, match="not unique"):
        build_split_table(obs.set_axis(["x"] * len(obs)), config, COLUMNS)
    missing = obs.astype({"pert": object})
    missing.iloc[0, 2] = np.nan
    with pytest.raises(InputError, match=r"'pert' \(columns.pert_col\) has 1 missing values"):
        build_split_table(missing, config, COLUMNS)


def test_params_errors(obs: pd.DataFrame, tmp_path) -> None:
    spec = SplitSpec(toml=None, training={}, zeroshot={}, fewshot={})
    with pytest.raises(InputError, match="clash with the design columns"):
        split_table_from_params(
            obs, SplitsParams(splits={"celltype": spec}), COLUMNS, project_root=tmp_path
        )
    with pytest.raises(InputError, match="empty"):
        split_table_from_params(obs, SplitsParams(splits={}), COLUMNS, project_root=tmp_path)


def test_a_split_table_of_the_old_layout_is_refused_by_name():
    table = pd.DataFrame(
        {"dataset": ["d"], "context": ["k562"], "perturbation": ["ctrl"], "is_control": [True]},
        index=["c0"],
    ).assign(zs="train")
    with pytest.raises(InputError, match=r"lacks the design column\(s\) \['celltype'\].*splits"):
        split_design(table.index, table, "zs", genes=["g"], matrix=np.zeros((1, 1)))
