"""Fixtures of this folder, defined with their helpers in the importable support.py."""

from tests.support import (  # noqa: F401 (fixtures)
    _papalexi_session,
    _perturbench_session,
    papalexi,
    papalexi_path,
    perturbench,
    perturbench_path,
    project_root,
)
