"""The shipped split configs on the shipped PerturBench devel subset."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pandas as pd
import pytest

from perturbflow.params import FewshotEntry, SplitsParams, SplitSpec
from perturbflow.splits import (
    build_split_table,
    load_split_toml,
    split_table_from_params,
    summarise_split_table,
)
from tests.support import PERTURBENCH_COLUMNS

COLUMNS = PERTURBENCH_COLUMNS
NAMES = ["fewshot", "zeroshot"]


@pytest.fixture(scope="module")
def obs(perturbench_path: Path) -> pd.DataFrame:
    adata = ad.read_h5ad(perturbench_path, backed="r")
    frame = adata.obs.copy()
    adata.file.close()
    return frame


@pytest.fixture(scope="module")
def table(obs: pd.DataFrame, project_root: Path) -> pd.DataFrame:
    specs = {
        name: SplitSpec(toml=f"conf/base/splits/{name}.toml", training={}, zeroshot={}, fewshot={})
        for name in NAMES
    }
    return split_table_from_params(
        obs, SplitsParams(splits=specs), COLUMNS, project_root=project_root
    )


def _config(project_root: Path, name: str):
    return load_split_toml(project_root / "conf" / "base" / "splits" / f"{name}.toml")


def test_shipped_tomls_parse(project_root: Path, perturbench_path: Path) -> None:
    for name in NAMES:
        config = _config(project_root, name)
        assert config.datasets == {
            "norman19": [perturbench_path.resolve()],
            "mcfaline23": [perturbench_path.resolve()],
        }
        assert config.training == {"norman19": "train", "mcfaline23": "train"}
    zero = _config(project_root, "zeroshot")
    assert zero.zeroshot == {("mcfaline23", "A172"): "test", ("mcfaline23", "U87MG"): "val"}
    few = _config(project_root, "fewshot").fewshot[("norman19", "k562")]
    assert len(few["test"]) == 8 and len(few["val"]) == 4


def test_fewshot_design(project_root: Path, obs: pd.DataFrame) -> None:
    """Held-out doubles keep both singles in training; every kind of hold-out is present."""
    few = _config(project_root, "fewshot").fewshot[("norman19", "k562")]
    k562 = set(obs.loc[obs["cell_type"] == "k562", "condition"].astype(str))
    shared = set(obs.loc[obs["cell_type"] == "A172", "condition"].astype(str)) - {"control"}
    heldout = set(few["val"]) | set(few["test"])
    for label in ("val", "test"):
        perts = few[label]
        doubles = [p for p in perts if "+" in p]
        singles = [p for p in perts if "+" not in p]
        assert doubles and set(singles) & shared and set(singles) - shared
        for double in doubles:
            parts = set(double.split("+"))
            assert not parts & heldout
        if label == "test":
            assert all(set(d.split("+")) <= k562 for d in doubles)


def test_fewshot_table(table: pd.DataFrame, obs: pd.DataFrame, project_root: Path) -> None:
    few = _config(project_root, "fewshot").fewshot[("norman19", "k562")]
    split, pert = table["fewshot"], table["perturbation"].astype(str)
    k562 = (table["dataset"] == "norman19") & (table["celltype"] == "k562")
    for label in ("val", "test"):
        held = k562 & pert.isin(few[label])
        assert (split[held] == label).all()
        assert (split[~held] != label).all()
        expected = (obs["cell_type"] == "k562") & obs["condition"].isin(few[label])
        assert int((split == label).sum()) == int(expected.sum())
    assert not (
        split[~table["is_control"] & k562 & pert.isin(few["val"] + few["test"])] == "train"
    ).any()
    assert (split[k562 & table["is_control"]] == "train").all()  # few-shot controls train
    assert (split[~k562] == "train").all()  # SGK1 etc. still train in the other cell types
    assert split.value_counts().to_dict() == {"train": 4761, "test": 800, "val": 400, "unused": 0}


def test_zeroshot_table(table: pd.DataFrame) -> None:
    split, context = table["zeroshot"], table["celltype"]
    assert (split[context == "A172"] == "test").all()
    assert (split[context == "U87MG"] == "val").all()
    assert not (split[table["is_control"] & context.isin(["A172", "U87MG"])] == "train").any()
    assert (split[context.isin(["k562", "T98G"])] == "train").all()
    assert split.value_counts().to_dict() == {"train": 4246, "val": 865, "test": 850, "unused": 0}


def test_single_config_matches_wide_table(
    table: pd.DataFrame, obs: pd.DataFrame, project_root: Path
) -> None:
    single = build_split_table(obs, _config(project_root, "fewshot"), COLUMNS)
    pd.testing.assert_series_equal(single["split"], table["fewshot"], check_names=False)
    pd.testing.assert_frame_equal(single.drop(columns="split"), table.drop(columns=NAMES))


def test_inline_params_equal_toml(
    table: pd.DataFrame, obs: pd.DataFrame, project_root: Path
) -> None:
    few = _config(project_root, "fewshot").fewshot[("norman19", "k562")]
    spec = SplitSpec(
        toml=None,
        training={"norman19": "train", "mcfaline23": "train"},
        zeroshot={},
        fewshot={"norman19.k562": FewshotEntry(val=few["val"], test=few["test"])},
    )
    inline = split_table_from_params(
        obs, SplitsParams(splits={"fewshot": spec}), COLUMNS, project_root=project_root
    )
    pd.testing.assert_series_equal(inline["fewshot"], table["fewshot"])


def test_parquet_round_trip(table: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "splits.parquet"
    table.to_parquet(path)
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, table)
    assert isinstance(back["fewshot"].dtype, pd.CategoricalDtype)


def test_summary(table: pd.DataFrame) -> None:
    summary = summarise_split_table(table, NAMES)
    assert list(summary.columns) == [
        "split_name",
        "split",
        "dataset",
        "celltype",
        "n_cells",
        "n_control_cells",
        "n_perturbations",
    ]
    for name in NAMES:
        assert summary.loc[summary["split_name"] == name, "n_cells"].sum() == len(table)
    row = summary.set_index(["split_name", "split", "celltype"]).loc[("fewshot", "train", "k562")]
    assert (row["n_cells"], row["n_control_cells"], row["n_perturbations"]) == (2175, 100, 21)
    test = summary.query("split_name == 'zeroshot' and split == 'test'")
    assert test[["celltype", "n_cells", "n_control_cells", "n_perturbations"]].values.tolist() == [
        ["A172", 850, 100, 9]
    ]
