"""Shared fixtures: the real screens shipped in data/01_raw and small generated data."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import pytest

from perturbflow.params import ColumnsParams

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RAW_DIR = PROJECT_ROOT / "data" / "01_raw"
PERTURBENCH_PATH = RAW_DIR / "perturbench_devel.h5ad"
PAPALEXI_PATH = RAW_DIR / "papalexi2021_thp1_sceptre_lowmoi.h5ad"

# The design of the two shipped screens (as in conf/base and conf/papalexi).
PERTURBENCH_COLUMNS = ColumnsParams(
    pert_col="condition",
    celltype_col="cell_type",
    batch_col=None,
    control_label="control",
    dataset_col="dataset",
    dataset_name="perturbench",
)
PAPALEXI_COLUMNS = ColumnsParams(
    pert_col="perturbation",
    celltype_col="cell_line",
    batch_col="bio_rep",
    control_label="non-targeting",
    dataset_col=None,
    dataset_name="papalexi",
)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def perturbench_path() -> Path:
    """Path of the shipped PerturBench devel subset (log1p, CSR float64, 5,961 x 500)."""
    return PERTURBENCH_PATH


@pytest.fixture(scope="session")
def papalexi_path() -> Path:
    """Path of the shipped Papalexi THP-1 screen (raw counts, CSR float32, 20,729 x 299)."""
    return PAPALEXI_PATH


@pytest.fixture(scope="session")
def _perturbench_session() -> ad.AnnData:
    return ad.read_h5ad(PERTURBENCH_PATH)


@pytest.fixture(scope="session")
def _papalexi_session() -> ad.AnnData:
    return ad.read_h5ad(PAPALEXI_PATH)


@pytest.fixture
def perturbench(_perturbench_session: ad.AnnData) -> ad.AnnData:
    """A fresh in-memory copy of the PerturBench devel subset (safe to modify)."""
    return _perturbench_session.copy()


@pytest.fixture
def papalexi(_papalexi_session: ad.AnnData) -> ad.AnnData:
    """A fresh in-memory copy of the Papalexi screen (safe to modify)."""
    return _papalexi_session.copy()
