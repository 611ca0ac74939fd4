"""Fixtures of this folder, defined with their helpers in the importable support.py."""

from tests.finetuning.support import (  # noqa: F401 (fixtures)
    base_run,
    ft_split,
    screen,
)
from tests.pipelines.support import project_copy  # noqa: F401 (fixture)
