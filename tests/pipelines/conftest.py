"""Fixtures of this folder, defined with their helpers in the importable support.py."""

from tests.pipelines.support import (  # noqa: F401 (fixtures)
    project_copy,
)
