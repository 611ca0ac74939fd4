"""Fixtures of this folder, defined with their helpers in the importable support.py."""

from tests.preprocess.support import (  # noqa: F401 (fixtures)
    kd_screen,
)
