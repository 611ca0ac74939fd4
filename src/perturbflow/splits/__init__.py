"""Train/validation/test splits from STATE/cell-load TOML configs or params (no Kedro)."""

from perturbflow.splits.config import SplitConfig, load_split_toml, split_config_from_spec
from perturbflow.splits.paths import expand_braces, resolve_dataset_pattern
from perturbflow.splits.table import (
    DESIGN_COLUMNS,
    SPLIT_LABELS,
    build_split_table,
    design_table,
    split_table_from_params,
    summarise_split_table,
)

__all__ = [
    "DESIGN_COLUMNS",
    "SPLIT_LABELS",
    "SplitConfig",
    "build_split_table",
    "design_table",
    "expand_braces",
    "load_split_toml",
    "resolve_dataset_pattern",
    "split_config_from_spec",
    "split_table_from_params",
    "summarise_split_table",
]
