"""The Optuna study: storage, sampler, pruner, resume and the sweep loop.

A study lives in an RDB storage (by default one sqlite file per study under
``data/06_models/optuna/``) opened with ``load_if_exists=True``: every finished trial is
committed there the moment it ends, so rerunning a killed sweep continues the same study
and runs only the trials still missing (``n_trials`` counts the study's finished trials,
across runs and machines).

A trial that was running when its process died stays ``RUNNING`` in the storage. Optuna's
heartbeat handles it: a running trial writes a heartbeat every ``heartbeat.interval``
seconds; before each new trial starts, trials whose heartbeat is older than
``heartbeat.grace_period`` are marked ``FAIL`` and (``heartbeat.max_retry`` > 0) their
parameters are enqueued again as a new trial (``RetryHeartbeatStaleTrialCallback``), which
the sweep runs first. A trial still alive on another machine keeps its heartbeat and is
left alone, which is why a resume does not simply fail every ``RUNNING`` trial. Optuna
writes a trial's first heartbeat from a thread that races the objective, and a trial with no
heartbeat is never stale, so :func:`run_study` writes that first beat itself before the
objective runs: a trial killed after it drew its parameters is always found and retried.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, ProgrammingError

from perturbflow.exceptions import InputError
from perturbflow.tuning.params import HeartbeatParams, PrunerParams, SamplerParams, TuneParams

logger = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# What a study remembers about how it was created; a resume with other values would mix
# incomparable trials in one study.
# ("init_from" holds the base run's folder: the attribute keeps the name studies were stored
# with before the base became the `base` key, so that those studies still resume)
IDENTITY_ATTRS = ("objective", "split", "init_from")


@dataclass(frozen=True)
class StudyStorage:
    """Where the studies live (the catalog's ``tune_storage``).

    Attributes:
        folder: Folder of the default sqlite files and of the trials' finetuned runs
            (``<folder>/<study_name>/trial-0007``).
        url: An Optuna RDB URL (``postgresql://...``) holding every study, or ``None`` for
            one sqlite file per study, ``<folder>/<study_name>.db``.
    """

    folder: Path
    url: str | None = None

    def study_url(self, study_name: str) -> str:
        """The storage URL of study ``study_name``.

        Raises:
            InputError: A URL that is not an RDB URL SQLAlchemy can parse.
        """
        if self.url is None:
            Path(self.folder).mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{Path(self.folder) / study_name}.db"
        try:
            url = make_url(self.url)
        except ArgumentError as err:
            raise InputError(
                f"The tune_storage url {self.url!r} is not a database URL (expected e.g. "
                "sqlite:///data/06_models/optuna/study.db or postgresql://user@host/db)."
            ) from err
        if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        return self.url

    def trial_dir(self, study_name: str, number: int) -> Path:
        """The finetuned run folder of trial ``number``."""
        return Path(self.folder) / study_name / f"trial-{number:04d}"


def make_storage(url: str, heartbeat: HeartbeatParams) -> RDBStorage:
    """An RDB storage with heartbeats, so trials of a killed process are detected.

    Args:
        url: The storage URL.
        heartbeat: Heartbeat interval, grace period and retries of dead trials.
    """
    if heartbeat.interval < 1 or heartbeat.grace_period <= heartbeat.interval:
        raise InputError(
            "tune.heartbeat: interval must be >= 1 s and grace_period longer than it "
            f"(got {heartbeat.interval} and {heartbeat.grace_period})."
        )
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several local workers on one sqlite file wait for the lock instead of failing
        engine_kwargs["connect_args"] = {"timeout": 60}
    with warnings.catch_warnings():
        # heartbeats are marked experimental since Optuna 2.9; they are its documented
        # way to detect trials killed mid-way
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = (
            RetryHeartbeatStaleTrialCallback(max_retry=heartbeat.max_retry)
            if heartbeat.max_retry > 0
            else None
        )
        return _create_storage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat.interval,
            grace_period=heartbeat.grace_period,
            heartbeat_stale_trial_callback=retry,
        )


#: Attempts at creating a storage whose schema another worker is creating at the same time.
SCHEMA_ATTEMPTS = 5


def _create_storage(url: str, **kwargs: Any) -> RDBStorage:
    """``RDBStorage(url, **kwargs)``, retried while another worker creates the same schema.

    Written by hand because Optuna creates its tables (and alembic's version table) without
    a lock: two workers that open one fresh PostgreSQL database at the same moment both run
    ``CREATE TABLE``, and the second fails with ``UniqueViolation``/``DuplicateTable``
    (seen in the two-worker test). Once the other worker's schema is committed the same
    call succeeds, so the error is retried a few times after a short, growing wait.
    """
    for attempt in range(1, SCHEMA_ATTEMPTS + 1):
        try:
            return RDBStorage(url, **kwargs)
        except (IntegrityError, ProgrammingError) as err:
            if attempt == SCHEMA_ATTEMPTS:
                raise
            logger.info(
                "Storage schema being created by another worker (%s); retrying (%d/%d).",
                type(getattr(err, "orig", err)).__name__,
                attempt,
                SCHEMA_ATTEMPTS - 1,
            )
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def make_sampler(params: SamplerParams, seed: int) -> optuna.samplers.TPESampler:
    """A seeded TPE sampler."""
    return optuna.samplers.TPESampler(
        n_startup_trials=params.n_startup_trials,
        multivariate=params.multivariate,
        seed=seed,
    )


def make_pruner(params: PrunerParams) -> optuna.pruners.BasePruner:
    """The pruner named by ``params.kind`` (``NopPruner`` for ``none``)."""
    if params.kind == "none":
        return optuna.pruners.NopPruner()
    if params.kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=params.n_startup_trials,
            n_warmup_steps=params.n_warmup_steps,
            interval_steps=params.interval_steps,
        )
    if params.kind == "percentile":
        return optuna.pruners.PercentilePruner(
            params.percentile,
            n_startup_trials=params.n_startup_trials,
            n_warmup_steps=params.n_warmup_steps,
            interval_steps=params.interval_steps,
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=max(1, params.n_warmup_steps), reduction_factor=params.reduction_factor
    )


def open_study(
    tune: TuneParams, storage: StudyStorage, *, identity: Mapping[str, str] | None = None
) -> optuna.Study:
    """Create the study, or load it when the storage already holds it (a resume).

    The sampler's seed is ``tune.seed`` plus the number of trials already in the study: a
    resumed sweep continues the history instead of replaying the first random draws of
    the killed one (TPE's startup trials would otherwise repeat their parameters).

    Args:
        tune: The tune params.
        storage: Where the study lives.
        identity: What the study is about (objective, split, base run). Stored as user
            attributes of a new study and compared on a resume.

    Raises:
        InputError: The stored study has another direction or identity.
    """
    rdb = make_storage(storage.study_url(tune.study_name), tune.heartbeat)
    study = optuna.create_study(
        storage=rdb,
        study_name=tune.study_name,
        direction=tune.direction,
        sampler=make_sampler(tune.sampler, tune.seed),
        pruner=make_pruner(tune.pruner),
        load_if_exists=True,
    )
    if study.direction.name.lower() != tune.direction:
        raise InputError(
            f"Study {tune.study_name!r} in {rdb.url} was created to "
            f"{study.direction.name.lower()}; tune.direction is {tune.direction}. Use "
            "another tune.study_name for a study with the other direction."
        )
    existing = study.get_trials(deepcopy=False)
    study.sampler = make_sampler(tune.sampler, tune.seed + len(existing))
    _check_identity(study, dict(identity or {}), tune.study_name)
    logger.info(
        "Study %s (%s): %d trials stored, %d finished.",
        tune.study_name,
        rdb.url,
        len(existing),
        count_finished(study),
    )
    return study


def _check_identity(study: optuna.Study, identity: dict[str, str], name: str) -> None:
    stored = study.user_attrs
    if not any(key in stored for key in IDENTITY_ATTRS):
        for key, value in identity.items():
            study.set_user_attr(key, value)
        return
    changed = {
        key: (stored.get(key), value) for key, value in identity.items() if stored.get(key) != value
    }
    if changed:
        text = ", ".join(f"{k}: stored {old!r}, now {new!r}" for k, (old, new) in changed.items())
        raise InputError(
            f"Study {name!r} was created for another tuning problem ({text}); its trials "
            "are not comparable with this one. Use another tune.study_name."
        )


def count_finished(study: optuna.Study) -> int:
    """Trials that ended complete or pruned (what ``n_trials`` counts)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _beat_first(
    objective: Callable[[optuna.Trial], float],
) -> Callable[[optuna.Trial], float]:
    """``objective``, preceded by one synchronous heartbeat of the trial.

    Written by hand because Optuna records the first heartbeat in its heartbeat thread,
    concurrently with the objective; a process killed before that thread ran leaves a
    ``RUNNING`` trial without any heartbeat, which ``fail_stale_trials`` skips forever (its
    parameters would never be retried).
    """

    def objective_after_a_heartbeat(trial: optuna.Trial) -> float:
        # the study wraps its RDBStorage in a cache that also beats; Optuna exports no
        # heartbeat base class, so ask for the methods (its own check, is_heartbeat_enabled,
        # is private too)
        storage = trial.storage
        interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
        if interval is not None:
            storage.record_heartbeat(trial._trial_id)  # Optuna has no public trial-id getter
        return objective(trial)

    return objective_after_a_heartbeat


def run_study(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    n_trials: int,
    timeout: float | None,
    callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
) -> int:
    """Run trials until the study holds ``n_trials`` finished trials (or ``timeout``).

    Trials already finished (by an earlier, killed run or by another machine) count, so a
    rerun only runs the missing ones. A trial raising :class:`optuna.TrialPruned` is
    pruned; any other exception marks it ``FAIL`` and stops the sweep (the error is
    re-raised, and the finished trials stay in the storage).

    Args:
        study: The study (:func:`open_study`).
        objective: The objective.
        n_trials: Finished trials wanted in the study in total.
        timeout: Seconds after which no new trial starts, or ``None``.
        callbacks: Extra Optuna callbacks run after each trial.

    Returns:
        The number of trials this call ran.
    """
    if n_trials < 1:
        raise InputError(f"tune.n_trials must be >= 1 (got {n_trials}).")
    if timeout is not None and timeout <= 0:
        raise InputError(f"tune.timeout must be > 0 seconds or null (got {timeout}).")
    before = len(study.get_trials(deepcopy=False))
    missing = n_trials - count_finished(study)
    if missing <= 0:
        logger.info("Study %s already holds %d finished trials.", study.study_name, n_trials)
        return 0
    logger.info("Running up to %d trials (study %s).", missing, study.study_name)
    # The cap on *finished* trials across all workers (other machines add to the count);
    # ``n_trials=missing`` bounds this process even when trials fail.
    stop = MaxTrialsCallback(n_trials, states=FINISHED)
    study.optimize(
        _beat_first(objective),
        n_trials=missing,
        timeout=timeout,
        callbacks=[stop, *callbacks],
        gc_after_trial=True,
    )
    return len(study.get_trials(deepcopy=False)) - before
