"""read_design: the design columns of small generated obs frames, with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from perturbflow.design import (
    CONTEXT_SEP,
    DESIGN_FIELDS,
    context_key,
    join_contexts,
    read_design,
)
from perturbflow.exceptions import InputError
from perturbflow.params import ColumnsParams


def _columns(**overrides) -> ColumnsParams:
    values = {
        "pert_col": "gene",
        "celltype_col": "cell_type",
        "batch_col": None,
        "control_label": "ctrl",
        "dataset_col": "study",
        "dataset_name": "screen",
    }
    return ColumnsParams(**{**values, **overrides})


@pytest.fixture
def obs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "gene": pd.Categorical(["ctrl", "A", "B", "ctrl", "A+B"]),
            "cell_type": ["K562", "K562", "RPE1", "RPE1", "K562"],
            "study": pd.Categorical(["s1", "s1", "s2", "s2", "s2"]),
            "other": np.arange(5),
        },
        index=[f"cell{i}" for i in range(5)],
    )


def test_with_dataset_column(obs: pd.DataFrame) -> None:
    design = read_design(obs, _columns())
    assert tuple(design.columns) == DESIGN_FIELDS
    assert design.index.equals(obs.index)
    assert design["dataset"].tolist() == ["s1", "s1", "s2", "s2", "s2"]
    assert design["celltype"].tolist() == ["K562", "K562", "RPE1", "RPE1", "K562"]
    assert design["context"].tolist() == ["s1.K562", "s1.K562", "s2.RPE1", "s2.RPE1", "s2.K562"]
    assert design["perturbation"].tolist() == ["ctrl", "A", "B", "ctrl", "A+B"]
    assert design["is_control"].tolist() == [True, False, False, True, False]
    assert design["is_control"].dtype == bool
    for name in ("dataset", "celltype", "context", "perturbation"):
        assert design[name].dtype == object, name


def test_without_dataset_column_uses_the_dataset_name(obs: pd.DataFrame) -> None:
    design = read_design(obs.drop(columns="study"), _columns(dataset_col=None))
    assert design["dataset"].tolist() == ["screen"] * 5
    assert design["context"].tolist() == [
        "screen.K562",
        "screen.K562",
        "screen.RPE1",
        "screen.RPE1",
        "screen.K562",
    ]


def test_control_detection_compares_labels_as_strings() -> None:
    obs = pd.DataFrame({"gene": [0, 1, 0, 2], "cell_type": ["a", "a", "b", "b"]})
    design = read_design(obs, _columns(control_label="0", dataset_col=None))
    assert design["is_control"].tolist() == [True, False, True, False]
    assert design["perturbation"].tolist() == ["0", "1", "0", "2"]


def test_no_control_is_left_to_the_caller(obs: pd.DataFrame) -> None:
    design = read_design(obs, _columns(control_label="non-targeting"))
    assert not design["is_control"].any()


def test_missing_values_read_as_strings() -> None:
    obs = pd.DataFrame({"gene": ["ctrl", None], "cell_type": ["a", np.nan]})
    design = read_design(obs, _columns(dataset_col=None))
    assert design["perturbation"].tolist() == ["ctrl", "None"]
    assert design["context"].tolist() == ["screen.a", "screen.nan"]


def test_empty_obs(obs: pd.DataFrame) -> None:
    design = read_design(obs.iloc[:0], _columns())
    assert tuple(design.columns) == DESIGN_FIELDS
    assert len(design) == 0


@pytest.mark.parametrize(
    ("param", "value", "what"),
    [
        ("pert_col", "gen", "perturbation label"),
        ("celltype_col", "celltype", "cell type"),
        ("dataset_col", "studies", "dataset name"),
    ],
)
def test_missing_column_names_it(obs: pd.DataFrame, param: str, value: str, what: str) -> None:
    with pytest.raises(InputError) as err:
        read_design(obs, _columns(**{param: value}))
    message = str(err.value)
    assert f"obs has no column {value!r} (columns.{param})" in message
    assert what in message
    assert "Available columns: ['gene', 'cell_type', 'study', 'other']" in message


def test_missing_column_suggests_a_close_one(obs: pd.DataFrame) -> None:
    with pytest.raises(InputError, match="Did you mean 'gene'"):
        read_design(obs, _columns(pert_col="genes"))


def test_context_helpers() -> None:
    assert CONTEXT_SEP == "."
    assert context_key("s1", "K562") == "s1.K562"
    joined = join_contexts(pd.Series(["a", "b"]), np.array(["x", "y"], dtype=object))
    assert joined.dtype == object
    assert joined.tolist() == ["a.x", "b.y"]
