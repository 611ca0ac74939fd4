"""The split data: configs, the per-cell split table, its cells and what training shows.

STATE/cell-load TOML configs or params become a per-cell split table (``config``, ``table``);
:class:`SplitCells` holds a split's cells with their expression and labels (``data``), the
per-key row index answers which rows a key has (``rows``), :class:`TrainingEffects` the
training deltas (``effects``) and :class:`Evidence` what else is known of a perturbation
(``evidence``). Every predictor reads these; none of them imports Kedro.
"""

from perturbflow.splits.config import SplitConfig, load_split_toml, split_config_from_spec
from perturbflow.splits.data import SplitCells, split_cells, split_design
from perturbflow.splits.effects import TrainingEffects, training_effects
from perturbflow.splits.evidence import Evidence
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
    "Evidence",
    "SplitCells",
    "TrainingEffects",
    "split_cells",
    "split_design",
    "training_effects",
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
