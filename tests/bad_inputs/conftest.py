"""Fixtures of this folder: the trained run of the model tests (a shared session fixture)."""

from tests.models.support import planted, trained_run  # noqa: F401 (fixtures)
