"""A partitioned dataset that loads as empty when no partition exists yet."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kedro.io.core import DatasetError
from kedro_datasets.partitions import PartitionedDataset


class OptionalPartitionedDataset(PartitionedDataset):
    """``partitions.PartitionedDataset`` whose ``load`` returns ``{}`` for an empty folder.

    The evaluation pipeline scores the baselines and *every model prediction present*:
    before any model was trained (``kedro run --pipelines evaluation`` on its own) the model
    predictions folder is empty, which kedro-datasets treats as an error.

    Several pipelines write into that one folder (``<split>/st`` from training,
    ``<split>/st_lora`` from finetuning). ``overwrite: true`` would let each delete the
    others' files; with ``replace_same_name: true`` a save removes only the existing
    partitions that share a saved partition's *name* (the last path part: ``st``), so a
    training rerun drops its own stale ``<old split>/st`` and keeps ``<split>/st_lora``.
    """

    def __init__(self, *args: Any, replace_same_name: bool = False, **kwargs: Any) -> None:
        """Args as ``PartitionedDataset``, plus ``replace_same_name`` (see the class).

        Raises:
            DatasetError: ``replace_same_name`` together with ``overwrite``.
        """
        super().__init__(*args, **kwargs)
        if replace_same_name and self._overwrite:
            raise DatasetError(
                "OptionalPartitionedDataset: set either overwrite or replace_same_name, not "
                "both (overwrite deletes every partition before a save)."
            )
        self._replace_same_name = replace_same_name

    def save(self, data: dict[str, Any]) -> None:
        """Save the partitions, first removing same-named ones that ``data`` lacks."""
        if self._replace_same_name:
            names = {pid.rsplit("/", 1)[-1] for pid in data}
            for path in self._list_partitions():
                pid = self._path_to_partition(path)
                if pid.rsplit("/", 1)[-1] in names and pid not in data:
                    self._filesystem.rm(path)
            self._invalidate_caches()
        super().save(data)

    def load(self) -> dict[str, Callable[[], Any]]:
        """The partitions' load functions, or ``{}`` when the folder has none."""
        try:
            return super().load()
        except DatasetError as err:
            if "No partitions found" in str(err):
                return {}
            raise
