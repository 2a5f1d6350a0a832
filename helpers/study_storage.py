"""Where a tuning study lives: its folder, its storage (a journal file or a database), heartbeats and retries.

By default a study is the journal file outputs/studies/<study>/journal.log, which several processes (on
this machine, or on machines sharing the file system) append to under a lock; a database URL (`--storage`,
or KIT_TUNE_STORAGE) serves machines that share a PostgreSQL server (Optuna's RDB storage). The database
password comes from KIT_TUNE_PASSWORD only and goes to the driver as a connection argument: a URL holding
one is refused, and the URL the kit prints has none. Optuna 5.0 gives heartbeats to its RDB storage only;
`HeartbeatJournalStorage` adds them to the journal storage, so a dead worker's trial is failed and retried
whichever storage holds the study.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from helpers.config import ConfigError
from helpers.paths import outputs_dir

STORAGE_ENV = "KIT_TUNE_STORAGE"  # a database URL, instead of --storage
PASSWORD_ENV = "KIT_TUNE_PASSWORD"  # the database password: never part of the URL
HEARTBEAT_S = 60  # a running trial's heartbeat interval; it is failed after GRACE_FACTOR of them unheard
GRACE_FACTOR = 2
SCHEMA_ATTEMPTS = 5  # a new database's tables: workers that create them at once retry


# -- where a study lives --------------------------------------------------------------------------------
def studies_dir() -> Path:
    return outputs_dir() / "studies"


def study_folder(study: str) -> Path:
    """outputs/studies/<study>: its journal file (the default storage) and its plots."""
    return studies_dir() / study


def journal_path(study: str) -> Path:
    return study_folder(study) / "journal.log"


def trial_run_name(study: str, number: int) -> str:
    """The run folder of a study's trial: <study>-t<number>, e.g. lr1-t007."""
    return f"{study}-t{number:03d}"


# -- storage ------------------------------------------------------------------------------------------------
class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with heartbeats, which Optuna gives its RDB storage only: each running
    trial's worker writes the time into the trial every `interval` seconds (a thread Optuna starts), and
    a running trial unheard for `grace` seconds counts as stale: Optuna's optimize loop marks it failed and
    calls `on_stale` (the retry). The times are wall-clock seconds, compared across machines: their clocks
    must agree to well within `grace`."""

    KEY = "kit:heartbeat"

    def __init__(
        self,
        backend: JournalFileBackend,
        interval: int,
        grace: int,
        on_stale: Callable[[optuna.Study, FrozenTrial], None] | None,
    ) -> None:
        super().__init__(backend)
        self._interval, self._grace, self._on_stale = interval, grace, on_stale

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, self.KEY, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            heard = trial.system_attrs.get(self.KEY)
            if heard is None and trial.datetime_start is not None:
                heard = trial.datetime_start.timestamp()
            if heard is not None and now - heard > self._grace:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._on_stale


def storage_url(given: str = "") -> str:
    """The database URL to use: `given`, else $KIT_TUNE_STORAGE; empty means the study's journal file."""
    return given or os.environ.get(STORAGE_ENV, "")


def shown_url(url: str) -> str:
    """The storage as the kit prints it: the journal file, or the URL with any password masked."""
    if not url:
        return "journal file"
    import sqlalchemy

    try:
        shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return "<a storage URL sqlalchemy cannot read>"
    return shown + (f" (password from ${PASSWORD_ENV})" if os.environ.get(PASSWORD_ENV) else "")


def open_storage(
    study: str, url: str = "", heartbeat: int = HEARTBEAT_S, grace: int | None = None, retries: int = 3
) -> BaseStorage:
    """The study's storage, with heartbeats and retries of a dead worker's trials: the journal file under
    outputs/studies/<study>/ when `url` is empty, else the database at `url` (RDB storage; its password
    from $KIT_TUNE_PASSWORD)."""
    grace = grace or GRACE_FACTOR * heartbeat
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=retries, inherit_intermediate_values=True)
        if not url:
            study_folder(study).mkdir(parents=True, exist_ok=True)
            return HeartbeatJournalStorage(
                JournalFileBackend(str(journal_path(study))), heartbeat, grace, retry
            )
        return _rdb_storage(_database_url(url), heartbeat, grace, retry)


def _rdb_storage(
    url: str, heartbeat: int, grace: int, retry: Callable[[optuna.Study, FrozenTrial], None]
) -> RDBStorage:
    """Optuna's RDB storage. Workers started together on a new database all create its tables, and all but
    one fail on a type or table the first has just made: the others try again once it exists."""
    import sqlalchemy

    def make() -> RDBStorage:
        return RDBStorage(
            url,
            engine_kwargs=_engine_kwargs(),
            heartbeat_interval=heartbeat,
            grace_period=grace,
            heartbeat_stale_trial_callback=retry,
        )

    for attempt in range(SCHEMA_ATTEMPTS - 1):
        try:
            return make()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(1 + attempt)
    return make()


def _database_url(url: str) -> str:
    """The URL checked: readable, without a password; `postgresql://` means psycopg 3, the driver the kit
    installs (sqlalchemy's default would be psycopg2)."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(
            "the storage URL cannot be read; e.g. postgresql://USER@HOST:5432/DATABASE (its password in "
            f"${PASSWORD_ENV})"
        ) from None
    if parsed.password:
        raise ConfigError(
            f"the storage URL {shown_url(url)} holds a password: leave it out and put it in ${PASSWORD_ENV}, "
            "so it is never printed, logged or saved"
        )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _engine_kwargs() -> dict[str, Any]:
    password = os.environ.get(PASSWORD_ENV)
    return {"connect_args": {"password": password}} if password else {}


def retry_of(trial: FrozenTrial) -> int | None:
    """The trial a retried trial runs again (its worker died), or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
