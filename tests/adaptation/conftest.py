"""Fixtures of this folder, defined with their helpers in the importable support.py."""

from tests.adaptation.support import (  # noqa: F401 (fixtures)
    adapt_run,
    run,
)
