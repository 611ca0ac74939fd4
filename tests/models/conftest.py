"""Fixtures of this folder, defined with their helpers in the importable support.py."""

from tests.models.support import (  # noqa: F401 (fixtures)
    planted,
    trained_run,
)
