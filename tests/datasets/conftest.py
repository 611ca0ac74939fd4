"""Fixtures of this folder, defined with their helpers in importable support modules."""

from tests.models.support import (  # noqa: F401 (fixtures)
    planted,
    trained_run,
)
