"""The data layer: lazy h5ad rows, cell sentences, control pairing, encodings (no Kedro).

Heavy modules (torch, lightning) are imported by the submodules that need them; import
from the submodules directly, e.g. ``from perturbflow.loading.datamodule import
PerturbationDataModule``.
"""
