"""notebooks/quickstart.ipynb runs top to bottom on a copy of the project."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.support import PROJECT_ROOT


@pytest.mark.slow
def test_quickstart_notebook_executes(project_copy: Path, monkeypatch: pytest.MonkeyPatch):
    (project_copy / "notebooks").mkdir()
    shutil.copy(PROJECT_ROOT / "notebooks" / "quickstart.ipynb", project_copy / "notebooks")
    monkeypatch.setenv("QUICKSTART_STEPS", "6")
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "1")
    nb = nbformat.read(project_copy / "notebooks" / "quickstart.ipynb", as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(project_copy / "notebooks")}},
    )
    client.execute(env=dict(os.environ))
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the delta plot
    assert (project_copy / "data/06_models/quickstart/fewshot/model.pt").is_file()
