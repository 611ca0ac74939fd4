"""A sweep in its own process, for the resume test (it is killed mid-way).

Usage: ``python sweep_worker.py PARAMS.json BLOCK_FROM``. The objective is a cheap real
function of the space's values; trials numbered ``BLOCK_FROM`` or more hang (a training
that is still running when the process is killed).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from perturbflow.tuning.params import TuneParams
from perturbflow.tuning.space import suggest
from perturbflow.tuning.study import StudyStorage, open_study, run_study


def value_of(values: dict) -> float:
    """The test objective: best at x = 1, k = 3 (or lora.alpha = 16, lora.rank = 16)."""
    if "x" in values:
        return -((values["x"] - 1.0) ** 2) + values["k"]
    return -((math.log(values["lora.alpha"]) - math.log(16.0)) ** 2) + values["lora.rank"] / 16


def read_args(path: str) -> tuple[TuneParams, StudyStorage]:
    """The tune params and study storage a test wrote (``support.worker_args``)."""
    args = json.loads(Path(path).read_text())
    return TuneParams(**args["tune"]), StudyStorage(folder=Path(args["folder"]), url=args["url"])


def main() -> None:
    tune, storage = read_args(sys.argv[1])
    block_from = int(sys.argv[2])

    def objective(trial):
        values = suggest(trial, tune.space)
        if trial.number >= block_from:
            time.sleep(3600)  # killed before it ends
        return value_of(values)

    run_study(open_study(tune, storage), objective, n_trials=tune.n_trials, timeout=None)


if __name__ == "__main__":
    main()
