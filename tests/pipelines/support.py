"""A throw-away copy of the project for Kedro session runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support import PROJECT_ROOT


def copy_project(dest: Path) -> Path:
    """Copy conf/, pyproject.toml, .telemetry and the raw screens into ``dest`` (src/ empty)."""
    shutil.copytree(PROJECT_ROOT / "conf", dest / "conf", ignore=shutil.ignore_patterns("local"))
    (dest / "conf" / "local").mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copy(PROJECT_ROOT / ".telemetry", dest / ".telemetry")  # telemetry off, as shipped
    (dest / "src").mkdir()  # kedro wants the source dir; the package itself is installed
    raw = dest / "data" / "01_raw"
    raw.mkdir(parents=True)
    for h5ad in (PROJECT_ROOT / "data" / "01_raw").glob("*.h5ad"):
        shutil.copy(h5ad, raw / h5ad.name)
    return dest


@pytest.fixture
def project_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project; the working directory is its root, as for ``kedro run``."""
    root = copy_project(tmp_path / "project")
    monkeypatch.chdir(root)
    return root
