"""A partitioned dataset that loads as empty when no partition exists yet."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kedro.io.core import DatasetError
from kedro_datasets.partitions import PartitionedDataset


class OptionalPartitionedDataset(PartitionedDataset):
    """``partitions.PartitionedDataset`` whose ``load`` returns ``{}`` for an empty folder.

    The evaluation pipeline scores the baselines and *every model prediction present*:
    before any model was trained (``kedro run --pipeline evaluation`` on its own) the model
    predictions folder is empty, which kedro-datasets treats as an error.
    """

    def load(self) -> dict[str, Callable[[], Any]]:
        """The partitions' load functions, or ``{}`` when the folder has none."""
        try:
            return super().load()
        except DatasetError as err:
            if "No partitions found" in str(err):
                return {}
            raise
