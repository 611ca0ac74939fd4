"""Fixtures of this folder, defined with their helpers in the importable support.py."""

from tests.drugs.support import (  # noqa: F401 (fixtures)
    drug_screen,
)
