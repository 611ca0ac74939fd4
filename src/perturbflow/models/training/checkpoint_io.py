"""Lightning checkpoints written atomically, so a kill mid-write never breaks a resume.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary
file lives in the system's temporary directory; when that is another filesystem than the
run directory (a container's ``/tmp``, a cluster's node-local disk) the final move is a
copy onto ``last.ckpt``, and a training killed during that copy leaves a truncated
``last.ckpt`` that the rerun cannot resume from. Here the checkpoint is written to a
temporary file beside its target and renamed onto it (atomic on POSIX), with
:func:`perturbflow.io_utils.atomic_path`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from perturbflow.io_utils import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that renames a finished temporary file onto the checkpoint."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` through a temporary file in the same directory.

        Args:
            checkpoint: The checkpoint dictionary (``torch.save``-able).
            path: Its final path.
            storage_options: Not supported (Lightning passes ``None``).

        Raises:
            TypeError: ``storage_options`` was given.
            OSError: The write failed (a full disk, most often): the message names the
                file and the free space left, and says that the run resumes from its last
                intact checkpoint. The temporary file is removed, ``path`` left as it was.
        """
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} does not take storage_options; got {storage_options!r}."
            )
        try:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)
        except (OSError, RuntimeError) as err:
            # torch reports a full disk as "RuntimeError: [enforce fail at
            # inline_container.cc] unexpected pos ...", which names neither file nor cause
            folder = Path(path).parent
            free = shutil.disk_usage(folder).free / 2**20 if folder.is_dir() else float("nan")
            raise OSError(
                f"Writing the checkpoint {path} failed with {free:,.0f} MiB free on its disk "
                f"({type(err).__name__}: {err}). The run's earlier checkpoints are intact: "
                "free some space (training.keep_step_checkpoints keeps fewer step=N.ckpt "
                "files) and rerun to resume from the last of them."
            ) from err
