"""The study as tables: one row per trial, and the best trial's parameters."""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from perturbflow.tuning.study import FINISHED


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, times, ``params_*`` and ``user_attrs_*``.

    Built by :meth:`optuna.Study.trials_dataframe`, plus ``last_step`` (the last step a
    value was reported at: where a pruned trial stopped) and ``retry_of`` (the trial
    whose parameters a retried trial repeats). Durations are in seconds.

    Args:
        study: The study.

    Returns:
        The table, sorted by trial number (empty with the columns ``number``, ``state``
        and ``value`` when the study has no trial).
    """
    trials = study.get_trials(deepcopy=False)
    if not trials:
        return pd.DataFrame(columns=["number", "state", "value"])
    frame = study.trials_dataframe(
        attrs=(
            "number",
            "state",
            "value",
            "datetime_start",
            "datetime_complete",
            "duration",
            "params",
            "user_attrs",
        )
    )
    by_number = {t.number: t for t in trials}
    frame["duration"] = frame["duration"].dt.total_seconds()
    frame["last_step"] = [
        by_number[n].last_step if by_number[n].last_step is not None else pd.NA
        for n in frame["number"]
    ]
    frame["retry_of"] = [
        by_number[n].system_attrs.get("failed_trial", pd.NA) for n in frame["number"]
    ]
    return frame.sort_values("number").reset_index(drop=True)


def best_params(study: optuna.Study, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The best complete trial: its number, value, parameters and user attributes.

    Args:
        study: The study.
        extra: More keys for the record (e.g. the resolved finetuning config).

    Returns:
        A JSON-ready dict; ``best_trial`` is ``None`` when no trial completed.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    counts = {
        state.name: len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState
    }
    record: dict[str, Any] = {
        "study_name": study.study_name,
        "direction": study.direction.name.lower(),
        "n_finished": sum(counts[s.name] for s in FINISHED),
        "trial_states": {k: v for k, v in counts.items() if v},
        "best_trial": None,
        "value": None,
        "params": {},
        "user_attrs": {},
    }
    if complete:
        best = study.best_trial
        record.update(
            best_trial=best.number,
            value=best.value,
            params=dict(best.params),
            user_attrs=dict(best.user_attrs),
        )
    record.update(extra or {})
    return record
