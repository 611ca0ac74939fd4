"""validate_adata and detect_expression_kind: every error names what is wrong."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from perturbflow.exceptions import InputError
from perturbflow.preprocess import detect_expression_kind, validate_adata
from tests.preprocess.support import (
    PAPALEXI_COLUMNS,
    PERTURBENCH_COLUMNS,
    assert_unchanged,
    snapshot,
)

SOURCE = "data/01_raw/screen.h5ad"


def _fails(adata, columns=PAPALEXI_COLUMNS, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        validate_adata(adata, columns, source=SOURCE, **kwargs)
    message = str(err.value)
    assert message.startswith(f"{SOURCE}: "), message
    return message


def test_detect_kind_real_files(papalexi, perturbench):
    assert detect_expression_kind(papalexi.X) == "counts"
    assert detect_expression_kind(perturbench.X) == "log1p"


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (np.array([[0, 3, 25], [1, 0, 7]], dtype=np.int64), "counts"),
        (np.array([[0, 1, 1], [1, 0, 1]], dtype=np.float32), "other"),  # binary
        (np.log1p(np.array([[0, 3, 25], [1, 0, 7]], dtype=float)), "log1p"),
        (np.array([[0.5, 300.2], [12.5, 0]]), "other"),  # normalised, not logged
        (np.array([[-1.2, 0.3], [0.7, 2.0]]), "other"),  # scaled
        (np.zeros((3, 2)), "other"),
    ],
)
def test_detect_kind_rules(values, kind):
    assert detect_expression_kind(values) == kind
    assert detect_expression_kind(sp.csr_matrix(values)) == kind


def test_valid_papalexi_summary(papalexi):
    before = snapshot(papalexi)
    summary = validate_adata(papalexi, PAPALEXI_COLUMNS, source=SOURCE)
    assert summary["n_obs"] == 20_729 and summary["n_vars"] == 299
    assert summary["detected_kind"] == "counts" and summary["kind"] == "counts"
    assert summary["n_perturbations"] == 25
    assert summary["n_control_cells"] == 2386
    assert summary["contexts"] == ["papalexi.THP-1"]
    assert summary["warnings"] == []
    assert_unchanged(papalexi, before)


def test_missing_column_lists_available(papalexi):
    columns = dataclasses.replace(PAPALEXI_COLUMNS, pert_col="perturbaton")
    message = _fails(papalexi, columns)
    assert "'perturbaton' (columns.pert_col) is missing" in message
    assert "Available columns: ['guide_id', 'gene', 'perturbation'" in message
    assert "Did you mean 'perturbation'?" in message


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [("celltype_col", "cellline", "celltype_col"), ("batch_col", "biorep", "batch_col")],
)
def test_missing_other_columns(papalexi, field, value, param):
    columns = dataclasses.replace(PAPALEXI_COLUMNS, **{field: value})
    assert f"'{value}' (columns.{param}) is missing" in _fails(papalexi, columns)


def test_absent_control_label_lists_closest(papalexi):
    columns = dataclasses.replace(PAPALEXI_COLUMNS, control_label="non_targeting")
    message = _fails(papalexi, columns)
    assert "control label 'non_targeting'" in message
    assert "which has 26 distinct values" in message
    assert "closest: ['non-targeting'" in message


def test_unlabelled_cells(papalexi):
    papalexi.obs["perturbation"] = papalexi.obs["perturbation"].astype(object)
    papalexi.obs.iloc[:4, papalexi.obs.columns.get_loc("perturbation")] = None
    assert "4 cells have no label in obs column 'perturbation'" in _fails(papalexi)


def test_duplicate_var_names(papalexi):
    names = list(papalexi.var_names)
    names[1], names[3] = names[0], names[2]
    papalexi.var_names = names
    message = _fails(papalexi)
    assert "2 gene names occur more than once" in message
    assert f"{names[0]!r}" in message and f"{names[2]!r}" in message


@pytest.mark.parametrize(
    ("bad", "text"), [(np.nan, "3 NaN"), (np.inf, "3 inf"), (-1.0, "3 negative")]
)
def test_bad_values_are_counted(papalexi, bad, text):
    papalexi.X.data[[0, 10, 20]] = bad
    message = _fails(papalexi)
    assert f"X holds {text} value(s)" in message
    assert "finite and non-negative" in message


def test_bad_values_dense(perturbench):
    perturbench.X = perturbench.X.toarray()
    perturbench.X[0, :2] = np.nan
    perturbench.X[1, 0] = -0.5
    message = _fails(perturbench, PERTURBENCH_COLUMNS)
    assert "2 NaN, 1 negative" in message


def test_counts_where_log1p_expected(papalexi):
    message = _fails(papalexi, expected_input="log1p")
    assert "expected_input is 'log1p' but X looks like raw counts" in message
    assert "Set expected_input to 'counts'" in message


def test_log1p_where_counts_expected(perturbench):
    message = _fails(perturbench, PERTURBENCH_COLUMNS, expected_input="counts")
    assert "expected_input is 'counts' but X looks like log1p values" in message
    assert "Set expected_input to 'log1p'" in message


def test_undecidable_kind_needs_explicit_setting(perturbench):
    perturbench.X = perturbench.X.expm1() * 100  # normalised, not logged
    message = _fails(perturbench, PERTURBENCH_COLUMNS)
    assert "cannot tell whether X holds raw counts or log1p" in message
    summary = validate_adata(perturbench, PERTURBENCH_COLUMNS, expected_input="log1p")
    assert summary["kind"] == "log1p"
    assert "does not look like log1p" in summary["warnings"][0]


def test_empty(papalexi):
    assert "the AnnData is empty (0 cells x 299 genes)" in _fails(papalexi[:0].copy())


def test_context_without_controls_is_a_warning(perturbench):
    obs = perturbench.obs
    no_ctrl = ~((obs["condition"] == "control") & (obs["cell_type"] == "A172")).to_numpy()
    subset = perturbench[no_ctrl].copy()
    summary = validate_adata(subset, PERTURBENCH_COLUMNS, source=SOURCE)
    assert summary["kind"] == "log1p"
    assert len(summary["warnings"]) == 1
    assert "'mcfaline23.A172' has no control cells" in summary["warnings"][0]
    assert "mcfaline23.A172" in summary["contexts"]
