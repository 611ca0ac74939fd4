"""Fixtures of this folder: the finetuning tests' screen and base run (shared session fixtures)."""

from tests.finetuning.support import base_run, ft_split, screen  # noqa: F401 (fixtures)
