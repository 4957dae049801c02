"""The run index: runs, step executions, cache entries and lineage in SQLite, shaped like ML Metadata.

ML Metadata's concepts and names are kept so the data maps onto it: ``contexts`` (pipeline, run,
experiment), ``executions`` (one per step run), ``artifacts`` (stored values), ``events`` (INPUT/OUTPUT
links between them), ``associations``/``attributions`` (context membership). ``runs`` and ``cache`` are
denormalised views kept for fast listing and cache look-ups.

Contracts other rooms rely on:

* ``runs.experiment`` names the tuning experiment a run was a trial of. The experiment's objective lives in
  the ``contexts`` row of type ``'experiment'``: ``properties = {"objective": METRIC, "goal": "minimize" |
  "maximize"}`` (write it with :meth:`RunStore.set_experiment`); ``%restore best`` reads it.
* ``runs.dag`` (JSON ``{step: [upstream steps]}``, from ``create_run(upstream=...)``) is the run's DAG; when a
  run has none, :meth:`RunStore.run_dag` infers data edges from the INPUT/OUTPUT events.
* ``executions.environment`` (JSON: ``python``, ``platform``, ``packages``) is what the step ran with
  (``record_execution(environment=...)``); ``executions.code_hash`` identifies the step's code
  (:func:`nbmagic.store.lineage.code_hash`).

Schema changes are additive migrations (``PRAGMA user_version``), so stores written by older versions stay
readable and older readers ignore the new columns.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sqlite3
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import home
from ..errors import NbMagicError
from .processes import identity, same_process

if TYPE_CHECKING:
    from .shared_cache import Wanted

SCHEMA = """
CREATE TABLE IF NOT EXISTS contexts (
    id INTEGER PRIMARY KEY, type TEXT NOT NULL, name TEXT NOT NULL, properties TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL, UNIQUE(type, name));
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, status TEXT NOT NULL, kind TEXT NOT NULL DEFAULT 'local',
    parameters TEXT NOT NULL DEFAULT '{}', metrics TEXT NOT NULL DEFAULT '{}', notebook TEXT, experiment TEXT,
    started REAL NOT NULL, ended REAL, steps INTEGER NOT NULL DEFAULT 0, cached INTEGER NOT NULL DEFAULT 0,
    error TEXT, url TEXT, owner_pid INTEGER, context_id INTEGER);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started);
CREATE TABLE IF NOT EXISTS executions (
    id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, step TEXT NOT NULL, state TEXT NOT NULL,
    cache_key TEXT, code_hash TEXT, cached INTEGER NOT NULL DEFAULT 0, started REAL, ended REAL,
    error TEXT, traceback TEXT, log TEXT, properties TEXT NOT NULL DEFAULT '{}', UNIQUE(run_id, step));
CREATE INDEX IF NOT EXISTS executions_run ON executions(run_id);
CREATE TABLE IF NOT EXISTS artifacts (
    id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, type TEXT, format TEXT, size INTEGER, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    execution_id INTEGER NOT NULL, artifact_id INTEGER NOT NULL, type TEXT NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (execution_id, type, name));
CREATE INDEX IF NOT EXISTS events_artifact ON events(artifact_id);
CREATE TABLE IF NOT EXISTS associations (context_id INTEGER NOT NULL, execution_id INTEGER NOT NULL,
    PRIMARY KEY (context_id, execution_id));
CREATE TABLE IF NOT EXISTS attributions (context_id INTEGER NOT NULL, artifact_id INTEGER NOT NULL,
    PRIMARY KEY (context_id, artifact_id));
CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY, step TEXT NOT NULL, execution_id INTEGER NOT NULL, outputs TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}', not_kept TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL,
    used REAL NOT NULL, carried TEXT);
CREATE TABLE IF NOT EXISTS remote_seen (uri TEXT NOT NULL, key TEXT NOT NULL, run_id TEXT, PRIMARY KEY (uri, key));
CREATE TABLE IF NOT EXISTS remote_outbox (uri TEXT NOT NULL, run_id TEXT NOT NULL, queued REAL NOT NULL,
    PRIMARY KEY (uri, run_id));
"""

SCHEMA_VERSION = 4
# (version, table, column, declaration): additive, so an older store gains them on first open
MIGRATIONS = (
    (2, "runs", "dag", "TEXT"),
    (2, "executions", "environment", "TEXT"),
    (3, "runs", "owner_start", "TEXT"),
    (4, "cache", "carried", "TEXT"),
)
INDEXES = """
CREATE INDEX IF NOT EXISTS runs_experiment ON runs(experiment);
CREATE INDEX IF NOT EXISTS executions_cache_key ON executions(cache_key);
CREATE INDEX IF NOT EXISTS cache_execution ON cache(execution_id);
"""


@dataclass
class RunRecord:
    id: str
    pipeline: str
    status: str
    kind: str
    parameters: dict[str, Any]
    metrics: dict[str, float]
    notebook: str | None
    experiment: str | None
    started: float
    ended: float | None
    steps: int
    cached: int
    error: str | None = None
    url: str | None = None

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


@dataclass
class CacheEntry:
    key: str
    step: str
    execution_id: int
    outputs: dict[str, dict[str, Any]]
    metrics: dict[str, float] = field(default_factory=dict)
    not_kept: dict[str, str] = field(default_factory=dict)
    # fingerprints of the values carried from ordinary cells the results were computed with; None: not known
    carried: dict[str, str | None] | None = None


class StoreUnavailable(NbMagicError):
    """The store's folder or index cannot be used (missing, not a folder, read-only, disk full)."""


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) owner-only (0700), whatever the umask; one clear error if impossible."""
    if path.exists() and not path.is_dir():
        raise StoreUnavailable(
            f"the run store {path} is a file, not a folder: point $NBMAGIC_HOME at a folder (or remove the file)"
        )
    try:
        missing = []
        for folder in (path, *path.parents):
            if folder.exists():
                break
            missing.append(folder)
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):
                folder.mkdir(mode=0o700)
            folder.chmod(0o700)  # the mode given to mkdir is masked by the umask
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)
    except NotADirectoryError:
        raise StoreUnavailable(
            f"cannot create the run store {path}: a part of that path is a file; point $NBMAGIC_HOME at a folder"
        ) from None
    except OSError as exc:
        raise StoreUnavailable(f"cannot create the run store {path}: {exc.strerror or exc}") from None


def index_error(exc: BaseException, path: Path) -> StoreUnavailable:
    """One line for an SQLite failure on the index: what happened to which file, and the fix."""
    text = str(exc).lower()
    if "full" in text or getattr(exc, "sqlite_errorcode", None) == 13:
        return StoreUnavailable(f"the run store index {path}: no space left on device (free space, then run again)")
    writable = os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))
    if "readonly" in text or "read-only" in text or ("unable to open" in text and path.exists() and not writable):
        return StoreUnavailable(
            f"the run store index {path} is read-only: make it and its folder writable by you"
            " (chmod u+w, or a read-write mount)"
        )
    if "not a database" in text or "malformed" in text:
        return StoreUnavailable(f"the run store index {path} is damaged ({exc}): move it away to start an empty index")
    if "unable to open" in text:
        return StoreUnavailable(f"cannot open the run store index {path}: check the folder exists and is writable")
    return StoreUnavailable(f"the run store index {path}: {exc}")


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


_HASH = re.compile(r"[0-9a-f]{16,128}")  # a value's content hash (as ObjectStore checks it)
# (store root, run id) -> (status, metrics, error, ended): run ends the index could not take when they happened
_UNFINISHED: dict[tuple[str, str], tuple[str, dict[str, float], str | None, float]] = {}


_REMOTES: dict[tuple[str, ...], Any] = {}


def _shared_store(uri: Any) -> Any:
    """One RemoteStore (and S3 client, slow to make) per URI, endpoint and key in this process."""
    from .remote import RemoteStore

    slot = (str(uri), *(os.environ.get(n, "") for n in ("AWS_ENDPOINT_URL", "NBMAGIC_STORE_KEY", "AWS_ACCESS_KEY_ID")))
    if slot not in _REMOTES:
        _REMOTES[slot] = RemoteStore(uri)
    return _REMOTES[slot]


def new_run_id() -> str:
    """Sortable by time, unique across processes: ``YYYYmmdd-HHMMSS-xxxxxx``."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime()) + "-" + uuid.uuid4().hex[:6]


class RunStore:
    """The on-disk store: values under ``objects/``, logs under ``runs/``, the index in ``index.sqlite``."""

    def __init__(self, root: Path | str | None = None, remote: Any = "configured") -> None:
        """``remote``: the shared store (a :class:`~nbmagic.store.remote.RemoteStore`), None for local only, or
        ``"configured"`` for the one ``$NBMAGIC_STORE_URI`` names."""
        self.root = Path(root) if root else home() / "store"
        make_private_dir(self.root)
        if remote == "configured":
            from ..store_uri import configured

            uri = configured()
            remote = None if uri is None else _shared_store(uri)
        self.remote = remote
        self._local = threading.local()
        try:
            conn = self._connection()
            conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise index_error(exc, self.root / "index.sqlite") from None
        self._migrate(conn)
        for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
            with contextlib.suppress(OSError):
                os.chmod(self.root / name, 0o600)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring an older index up to :data:`SCHEMA_VERSION` (add columns and indexes; nothing is dropped)."""
        if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        with self._db() as db:  # one process migrates; the others wait, then find the work done
            if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
                return
            for _version, table, column, decl in MIGRATIONS:
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            for statement in INDEXES.strip().split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        """Close this thread's connection to the index (the next call opens a new one)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- plumbing --------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            path = self.root / "index.sqlite"
            try:
                conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA busy_timeout=60000")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise index_error(exc, path) from None
            self._local.conn = conn
        return conn

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise index_error(exc, self.path) from None
            return self.conn

        def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
            try:
                self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
            except sqlite3.Error as error:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                if exc_type is None:
                    raise index_error(error, self.path) from None
            if isinstance(exc, sqlite3.Error):
                raise index_error(exc, self.path) from None

        @property
        def path(self) -> Path:
            return Path(self.conn.execute("PRAGMA database_list").fetchone()[2])

    def _db(self) -> RunStore._Tx:
        return RunStore._Tx(self._connection())

    @property
    def objects(self):  # noqa: ANN201 - ObjectStore, imported lazily
        from .objects import ObjectStore

        store = getattr(self, "_objects", None)
        if store is None:
            store = self._objects = ObjectStore(self.root, remote=self.remote)
        return store

    def run_dir(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id in (".", ".."):
            raise NbMagicError(f"not a run id: {run_id!r}")
        make_private_dir(self.root / "runs")
        path = self.root / "runs" / run_id
        make_private_dir(path)
        return path

    def _context(self, db: sqlite3.Connection, type_: str, name: str, properties: dict[str, Any] | None = None) -> int:
        row = db.execute("SELECT id FROM contexts WHERE type=? AND name=?", (type_, name)).fetchone()
        if row:
            return row[0]
        cur = db.execute(
            "INSERT INTO contexts(type, name, properties, created) VALUES (?,?,?,?)",
            (type_, name, json.dumps(properties or {}), time.time()),
        )
        return cur.lastrowid

    # -- runs ------------------------------------------------------------------------------
    def create_run(
        self,
        pipeline: str,
        parameters: dict[str, Any],
        steps: list[str],
        *,
        notebook: str | None = None,
        experiment: str | None = None,
        kind: str = "local",
        run_id: str | None = None,
        url: str | None = None,
        upstream: dict[str, list[str]] | None = None,
    ) -> str:
        """Index a new run; ``upstream`` (step -> the steps it runs after) records the run's DAG."""
        import platform

        run_id = run_id or new_run_id()
        with self._db() as db:
            context = self._context(
                db,
                "run",
                run_id,
                {"pipeline": pipeline, "python": platform.python_version(), "platform": platform.platform()},
            )
            self._context(db, "pipeline", pipeline)
            if experiment:
                self._context(db, "experiment", experiment)
            db.execute(
                "INSERT INTO runs(id, pipeline, status, kind, parameters, notebook, experiment, started, steps, url, owner_pid, context_id)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    pipeline,
                    "running",
                    kind,
                    json.dumps(parameters),
                    notebook,
                    experiment,
                    time.time(),
                    len(steps),
                    url,
                    os.getpid(),
                    context,
                ),
            )
            for step in steps:
                db.execute("INSERT INTO executions(run_id, step, state) VALUES (?,?,?)", (run_id, step, "pending"))
            db.execute("UPDATE runs SET owner_start=? WHERE id=?", (identity(os.getpid()), run_id))
            if upstream is not None:
                db.execute(
                    "UPDATE runs SET dag=? WHERE id=?", (json.dumps({k: list(v) for k, v in upstream.items()}), run_id)
                )
        return run_id

    def set_run_dag(self, run_id: str, upstream: dict[str, list[str]]) -> None:
        """Record the run's DAG (step -> the steps it runs after) when ``create_run`` did not get it."""
        with self._db() as db:
            db.execute(
                "UPDATE runs SET dag=? WHERE id=?", (json.dumps({k: list(v) for k, v in upstream.items()}), run_id)
            )

    def run_dag(self, run_id: str) -> dict[str, list[str]]:
        """step -> upstream steps, in execution (topological) order: recorded, else inferred from data edges."""
        conn = self._connection()
        row = conn.execute("SELECT dag FROM runs WHERE id=?", (run_id,)).fetchone()
        steps = [r[0] for r in conn.execute("SELECT step FROM executions WHERE run_id=? ORDER BY id", (run_id,))]
        if row and row[0]:
            recorded = json.loads(row[0])
            return {s: list(recorded.get(s, [])) for s in steps}
        # a step read variable v whose value (same name, same artifact) an earlier step assigned
        produced: dict[tuple[str, int], str] = {}
        dag: dict[str, list[str]] = {s: [] for s in steps}
        rows = conn.execute(
            "SELECT e.step, ev.type, ev.name, ev.artifact_id FROM executions e JOIN events ev ON ev.execution_id = e.id"
            " WHERE e.run_id=? ORDER BY e.id",
            (run_id,),
        ).fetchall()
        by_step: dict[str, list[tuple[str, str, int]]] = {}
        for step, kind, name, artifact in rows:
            by_step.setdefault(step, []).append((kind, name, artifact))
        for step in steps:
            for kind, name, artifact in by_step.get(step, []):
                source = produced.get((name, artifact))
                if kind == "INPUT" and source and source != step and source not in dag[step]:
                    dag[step].append(source)
            for kind, name, artifact in by_step.get(step, []):
                if kind == "OUTPUT":
                    produced[(name, artifact)] = step
        return dag

    # -- experiments -------------------------------------------------------------------------
    def set_experiment(self, name: str, objective: str, goal: str, **properties: Any) -> None:
        """Record a tuning experiment's objective metric and goal (``minimize``/``maximize``) on its context."""
        if goal not in ("minimize", "maximize"):
            raise NbMagicError(f"experiment {name!r}: goal must be 'minimize' or 'maximize', not {goal!r}")
        with self._db() as db:
            context = self._context(db, "experiment", name)
            row = db.execute("SELECT properties FROM contexts WHERE id=?", (context,)).fetchone()
            merged = {**json.loads(row[0] or "{}"), **properties, "objective": objective, "goal": goal}
            db.execute("UPDATE contexts SET properties=? WHERE id=?", (json.dumps(merged), context))

    def experiment_properties(self, name: str) -> dict[str, Any] | None:
        """The experiment context's properties (``objective``, ``goal``, …), or None if there is no such context."""
        row = (
            self._connection()
            .execute("SELECT properties FROM contexts WHERE type='experiment' AND name=?", (name,))
            .fetchone()
        )
        return json.loads(row[0] or "{}") if row else None

    def finish_run(self, run_id: str, status: str, metrics: dict[str, float], error: str | None = None) -> None:
        """Record how a run ended. If the index cannot be written now (disk full, read-only), the outcome is
        kept in this process and written by the next call that can (``list_runs``, gc, the next run)."""
        try:
            self._finish_run(run_id, status, metrics, error, time.time())
        except StoreUnavailable:
            _UNFINISHED[(str(self.root), run_id)] = (status, metrics, error, time.time())
            raise
        if self.remote is not None:
            with self._db() as db:
                db.execute(
                    "INSERT OR IGNORE INTO remote_outbox VALUES (?,?,?)", (str(self.remote.uri), run_id, time.time())
                )
            self.publish_pending()

    def _finish_pending(self) -> None:
        for (root, run_id), outcome in list(_UNFINISHED.items()):
            if root == str(self.root):
                try:
                    self._finish_run(run_id, *outcome)
                except StoreUnavailable:
                    return
                _UNFINISHED.pop((root, run_id), None)

    def _finish_run(self, run_id: str, status: str, metrics: dict[str, float], error: str | None, ended: float) -> None:
        with self._db() as db:
            if status != "done":
                db.execute(
                    "UPDATE executions SET state='failed' WHERE run_id=? AND state IN ('running','pending')", (run_id,)
                )
            cached = db.execute("SELECT COUNT(*) FROM executions WHERE run_id=? AND cached=1", (run_id,)).fetchone()[0]
            db.execute(
                "UPDATE runs SET status=?, metrics=?, ended=?, cached=?, error=? WHERE id=?",
                (status, json.dumps(metrics), ended, cached, error, run_id),
            )

    def update_run(self, run_id: str, **fields: Any) -> None:
        allowed = {"status", "metrics", "ended", "error", "url"}
        sets = {k: (json.dumps(v) if k == "metrics" else v) for k, v in fields.items() if k in allowed}
        if not sets:
            return
        with self._db() as db:
            db.execute(f"UPDATE runs SET {', '.join(f'{k}=?' for k in sets)} WHERE id=?", (*sets.values(), run_id))

    def _record(self, row: sqlite3.Row | tuple) -> RunRecord:
        rid, pipeline, status, kind, params, metrics, *rest = row  # rest: notebook ... url, as _RUN_COLUMNS
        return RunRecord(rid, pipeline, status, kind, json.loads(params), json.loads(metrics), *rest)

    _RUN_COLUMNS = "id, pipeline, status, kind, parameters, metrics, notebook, experiment, started, ended, steps, cached, error, url"

    def get_run(self, run_id: str) -> RunRecord | None:
        row = self._connection().execute(f"SELECT {self._RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)).fetchone()
        return self._record(row) if row else None

    def list_runs(
        self, limit: int | None = None, pipeline: str | None = None, experiment: str | None = None
    ) -> list[RunRecord]:
        self.sync()
        self.mark_torn_runs()
        query = f"SELECT {self._RUN_COLUMNS} FROM runs"
        where, args = [], []
        if pipeline:
            where.append("pipeline=?")
            args.append(pipeline)
        if experiment:
            where.append("experiment=?")
            args.append(experiment)
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY started DESC"
        if limit:
            query += f" LIMIT {int(limit)}"
        return [self._record(r) for r in self._connection().execute(query, args)]

    def resolve_run(self, ref: str) -> str:
        """A run id from an id, a unique prefix, ``last``, ``best`` or ``best:EXPERIMENT``; one clear line otherwise."""
        ref = (ref or "").strip()
        if not ref:
            raise NbMagicError("which run? give a run id, a unique prefix, 'last' or 'best'")
        self.sync()
        if ref == "best" or ref.startswith("best:"):
            return self._resolve_best(ref.partition(":")[2] or None)
        conn = self._connection()
        if ref == "last":
            row = conn.execute("SELECT id FROM runs WHERE kind='local' ORDER BY started DESC LIMIT 1").fetchone()
            if not row:
                raise NbMagicError("no runs in the store yet")
            return row[0]
        if not ref or not all(c.isalnum() or c in "-_" for c in ref):
            raise NbMagicError(f"no run {ref!r} in the store (a run id looks like 20260101-120000-ab12cd)")
        escaped = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = conn.execute(
            "SELECT id FROM runs WHERE id LIKE ? ESCAPE '\\' ORDER BY started DESC LIMIT 2", (escaped + "%",)
        ).fetchall()
        if not rows:
            raise NbMagicError(f"no run {ref!r} in the store")
        if len(rows) > 1 and rows[0][0] != ref:
            raise NbMagicError(f"run prefix {ref!r} is ambiguous ({rows[0][0]}, {rows[1][0]}, …)")
        return rows[0][0]

    def _resolve_best(self, experiment: str | None) -> str:
        """``best``: :meth:`best_trial` of ``experiment`` (default: the most recent experiment), or one clear line."""
        if experiment is None:
            experiment = self.latest_experiment()
            if experiment is None:
                raise NbMagicError("'best': no tuning experiment in the store yet (runs of %katib have one)")
        if not self.has_experiment(experiment):
            raise NbMagicError(f"'best': no experiment {experiment!r} in the store")
        objective = (self.experiment_properties(experiment) or {}).get("objective")
        if not objective:
            raise NbMagicError(f"'best': experiment {experiment!r} has no recorded objective; restore a run id instead")
        best = self.best_trial(experiment)
        if best is None:
            raise NbMagicError(f"'best': experiment {experiment!r} has no finished trial with metric {objective!r}")
        return best

    def mark_torn_runs(self) -> int:
        """Runs left 'running' by a process that no longer exists are failed (e.g. after kill -9); runs whose
        end this process could not record earlier (a full disk) are recorded now."""
        if _UNFINISHED:
            self._finish_pending()
        conn = self._connection()
        torn = []
        for run_id, pid, started in conn.execute(
            "SELECT id, owner_pid, owner_start FROM runs WHERE status IN ('running','pending') AND kind='local'"
        ).fetchall():
            if pid and not same_process(pid, started):
                torn.append(run_id)
        for run_id in torn:
            with self._db() as db:
                db.execute(
                    "UPDATE runs SET status='failed', error='the run was interrupted (its process ended)', ended=COALESCE(ended, ?) WHERE id=?",
                    (time.time(), run_id),
                )
                db.execute(
                    "UPDATE executions SET state='failed' WHERE run_id=? AND state IN ('running','pending')", (run_id,)
                )
        return len(torn)

    # -- executions and lineage ----------------------------------------------------------------
    def set_step(self, run_id: str, step: str, state: str, **fields: Any) -> None:
        allowed = {"cache_key", "code_hash", "cached", "started", "ended", "error", "traceback", "log", "properties"}
        sets = {k: (json.dumps(v) if k == "properties" else v) for k, v in fields.items() if k in allowed}
        sets["state"] = state
        with self._db() as db:
            db.execute(
                f"UPDATE executions SET {', '.join(f'{k}=?' for k in sets)} WHERE run_id=? AND step=?",
                (*sets.values(), run_id, step),
            )

    def add_step(self, run_id: str, step: str) -> None:
        """Add a pending step to a run that grows as it goes (a notebook session); nothing if it is there."""
        with self._db() as db:
            db.execute(
                "INSERT OR IGNORE INTO executions(run_id, step, state) VALUES (?,?,?)", (run_id, step, "pending")
            )
            db.execute(
                "UPDATE runs SET steps=(SELECT COUNT(*) FROM executions WHERE run_id=?) WHERE id=?", (run_id, run_id)
            )

    def record_execution(
        self,
        run_id: str,
        step: str,
        inputs: dict[str, dict[str, Any]],
        outputs: dict[str, dict[str, Any]],
        environment: dict[str, Any] | None = None,
    ) -> int:
        """Link a step execution to the values it read (INPUT) and assigned (OUTPUT).

        ``environment`` (see :func:`nbmagic.store.lineage.environment`) records the Python and package versions
        the step ran with; without it the Python version and platform of this process are recorded.
        """
        if environment is None:
            import platform

            environment = {"python": platform.python_version(), "platform": platform.platform()}
        with self._db() as db:
            execution_id, context_id = db.execute(
                "SELECT e.id, r.context_id FROM executions e JOIN runs r ON r.id = e.run_id WHERE e.run_id=? AND e.step=?",
                (run_id, step),
            ).fetchone()
            db.execute("INSERT OR IGNORE INTO associations VALUES (?,?)", (context_id, execution_id))
            db.execute("UPDATE executions SET environment=? WHERE id=?", (json.dumps(environment), execution_id))
            for kind, values in (("INPUT", inputs), ("OUTPUT", outputs)):
                for name, ref in values.items():
                    artifact = self._artifact(db, ref)
                    db.execute("INSERT OR REPLACE INTO events VALUES (?,?,?,?)", (execution_id, artifact, kind, name))
                    db.execute("INSERT OR IGNORE INTO attributions VALUES (?,?)", (context_id, artifact))
        return execution_id

    def _artifact(self, db: sqlite3.Connection, ref: dict[str, Any]) -> int:
        row = db.execute("SELECT id FROM artifacts WHERE hash=?", (ref["hash"],)).fetchone()
        if row:
            return row[0]
        cur = db.execute(
            "INSERT INTO artifacts(hash, type, format, size, created) VALUES (?,?,?,?,?)",
            (ref["hash"], ref.get("type"), ref.get("format"), ref.get("size"), time.time()),
        )
        return cur.lastrowid

    def step_rows(self, run_id: str) -> list[dict[str, Any]]:
        cur = self._connection().execute(
            "SELECT id, step, state, cached, started, ended, error, traceback, log, cache_key, code_hash, properties, environment"
            " FROM executions WHERE run_id=? ORDER BY id",
            (run_id,),
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur]

    def step_values(self, run_id: str, step: str, kind: str = "OUTPUT") -> dict[str, dict[str, Any]]:
        """name -> value reference for what a step execution read or assigned."""
        rows = self._connection().execute(
            "SELECT ev.name, a.hash, a.type, a.format, a.size FROM events ev JOIN executions e ON e.id = ev.execution_id"
            " JOIN artifacts a ON a.id = ev.artifact_id WHERE e.run_id=? AND e.step=? AND ev.type=?",
            (run_id, step, kind),
        )
        return {name: {"hash": h, "type": t, "format": f, "size": s, "name": name} for name, h, t, f, s in rows}

    # -- cache ---------------------------------------------------------------------------------
    def cache_get(self, key: str, touch: bool = True, wanted: Wanted | None = None) -> CacheEntry | None:
        """The entry under ``key`` when every value it names is still stored; ``touch`` marks it used now (for gc)
        — a caller in a hurry does it later with :meth:`cache_touch`. A local miss asks the shared store only
        with ``wanted`` (what the step needs from an entry, see :mod:`nbmagic.store.shared_cache`)."""
        row = (
            self._connection()
            .execute(
                "SELECT key, step, execution_id, outputs, metrics, not_kept, carried FROM cache WHERE key=?", (key,)
            )
            .fetchone()
        )
        if row is None:
            return self._shared_cache_get(key, wanted)
        carried = json.loads(row[6]) if row[6] else None
        entry = CacheEntry(row[0], row[1], row[2], json.loads(row[3]), json.loads(row[4]), json.loads(row[5]), carried)
        if not all(self.objects.exists(ref["hash"]) for ref in entry.outputs.values()):
            return self._shared_cache_get(key, wanted)  # a value was collected or lost here: the team's, else run again
        if touch:
            self.cache_touch(key)
        return entry

    def _shared_cache_get(self, key: str, wanted: Wanted | None) -> CacheEntry | None:
        """A local miss: the shared store's entry under ``key``, verified, its values pulled here (or None)."""
        if self.remote is None or wanted is None:
            return None
        from .shared_cache import lookup

        return lookup(self, key, wanted)

    def cache_entries_of_run(self, run_id: str) -> list[CacheEntry]:
        """The cache entries whose results the steps of ``run_id`` computed (not those it took from the cache)."""
        rows = (
            self._connection()
            .execute(
                "SELECT c.key, c.step, c.execution_id, c.outputs, c.metrics, c.not_kept, c.carried FROM cache c"
                " JOIN executions e ON e.id = c.execution_id WHERE e.run_id=? AND e.cached=0",
                (run_id,),
            )
            .fetchall()
        )
        return [
            CacheEntry(k, s, x, json.loads(o), json.loads(m), json.loads(n), json.loads(c) if c else None)
            for k, s, x, o, m, n, c in rows
        ]

    def cache_touch(self, key: str) -> None:
        with self._db() as db:
            db.execute("UPDATE cache SET used=? WHERE key=?", (time.time(), key))

    def cache_put(
        self,
        key: str,
        step: str,
        execution_id: int,
        outputs: dict[str, Any],
        metrics: dict[str, float],
        not_kept: dict[str, str],
        carried: dict[str, str | None] | None = None,
    ) -> None:
        """``carried``: fingerprints of the values carried from ordinary cells the results were computed with."""
        now = time.time()
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO cache (key, step, execution_id, outputs, metrics, not_kept, created, used,"
                " carried) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    key,
                    step,
                    execution_id,
                    json.dumps(outputs),
                    json.dumps(metrics),
                    json.dumps(not_kept),
                    now,
                    now,
                    None if carried is None else json.dumps(carried),
                ),
            )

    def cache_drop_values(self, hashes: set[str]) -> int:
        """Forget every cache entry whose outputs include one of ``hashes`` (a lost or corrupt value)."""
        if not hashes:
            return 0
        doomed = []
        for key, outputs in self._connection().execute("SELECT key, outputs FROM cache").fetchall():
            if any(ref.get("hash") in hashes for ref in json.loads(outputs).values()):
                doomed.append((key,))
        if doomed:
            with self._db() as db:
                db.executemany("DELETE FROM cache WHERE key=?", doomed)
        return len(doomed)

    def cached_not_kept(self, key: str | None, reused_execution: int | None) -> dict[str, str]:
        """What a cached step could not keep: from its cache entry, else from the execution it reused."""
        conn = self._connection()
        row = conn.execute("SELECT not_kept FROM cache WHERE key=?", (key,)).fetchone() if key else None
        if row is None and reused_execution:
            row = conn.execute(
                "SELECT json_extract(properties, '$.not_kept') FROM executions WHERE id=?", (reused_execution,)
            ).fetchone()
        return dict(json.loads(row[0])) if row and row[0] else {}

    # -- queries the other store modules, restore and the magics use ----------------------------
    def runs(self, experiment: str | None = None, pipeline: str | None = None) -> list[RunRecord]:
        """Every run (newest first), optionally of one experiment or pipeline."""
        return self.list_runs(pipeline=pipeline, experiment=experiment)

    def latest_experiment(self) -> str | None:
        """The experiment of the most recent run that was a trial, or None."""
        row = (
            self._connection()
            .execute("SELECT experiment FROM runs WHERE experiment IS NOT NULL ORDER BY started DESC LIMIT 1")
            .fetchone()
        )
        return row[0] if row else None

    def has_experiment(self, name: str) -> bool:
        """True when a run or an experiment context of that name exists."""
        conn = self._connection()
        return bool(
            conn.execute("SELECT 1 FROM runs WHERE experiment=? LIMIT 1", (name,)).fetchone()
            or conn.execute("SELECT 1 FROM contexts WHERE type='experiment' AND name=?", (name,)).fetchone()
        )

    def best_trial(self, experiment: str) -> str | None:
        """THE rule for an experiment's best trial, used by ``%restore best`` and by gc alike.

        Among the experiment's finished (``done``) runs started since its ``since`` property (set by
        ``%katib --restart``), the one whose objective metric is lowest (``minimize``) or highest
        (``maximize``); NaN and missing values never win; on a tie the earliest trial (as ``Experiment.best``). None when the experiment
        has no objective or no such trial.
        """
        props = self.experiment_properties(experiment) or {}
        objective = props.get("objective")
        if not objective:
            return None
        sign = 1.0 if props.get("goal", "minimize") == "minimize" else -1.0
        since = props.get("since") or 0.0
        best: tuple[float, str] | None = None
        for run_id, started, metrics in self._connection().execute(
            "SELECT id, started, metrics FROM runs WHERE experiment=? AND status='done' ORDER BY started, id",
            (experiment,),
        ):
            value = json.loads(metrics or "{}").get(objective)
            if started < since or isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                continue
            if best is None or sign * value < best[0]:
                best = (sign * value, run_id)
        return best[1] if best else None

    def best_trials(self) -> set[str]:
        """The best trial (:meth:`best_trial`) of every experiment in the store."""
        names = [
            r[0]
            for r in self._connection().execute("SELECT DISTINCT experiment FROM runs WHERE experiment IS NOT NULL")
        ]
        return {run for run in (self.best_trial(name) for name in names) if run}

    def newest_runs(self) -> set[str]:
        """The newest run of each pipeline (gc never collects these)."""
        rows = self._connection().execute("SELECT pipeline, id FROM runs ORDER BY started DESC, id DESC").fetchall()
        newest: dict[str, str] = {}
        for pipeline, run_id in rows:
            newest.setdefault(pipeline, run_id)
        return set(newest.values())

    def latest_output(self, name: str, run_ids: list[str] | None = None) -> tuple[str, int] | None:
        """(run id, artifact id) of the newest execution that assigned ``name`` (within ``run_ids`` if given)."""
        self.sync()
        conn = self._connection()
        query = (
            "SELECT e.run_id, ev.artifact_id FROM events ev JOIN executions e ON e.id = ev.execution_id"
            " WHERE ev.name=? AND ev.type='OUTPUT'"
        )
        if run_ids is None:
            row = conn.execute(query + " ORDER BY e.id DESC LIMIT 1", (name,)).fetchone()
            return (row[0], row[1]) if row else None
        for run_id in run_ids:
            row = conn.execute(query + " AND e.run_id=? ORDER BY e.id DESC LIMIT 1", (name, run_id)).fetchone()
            if row:
                return row[0], row[1]
        return None

    def artifact(self, artifact_id: int) -> tuple[int, str, str | None, str | None, int | None] | None:
        """(id, hash, type, format, size) of an artifact, or None."""
        return (
            self._connection()
            .execute("SELECT id, hash, type, format, size FROM artifacts WHERE id=?", (artifact_id,))
            .fetchone()
        )

    def artifacts_with_prefix(self, prefix: str, limit: int = 2) -> list[tuple]:
        """(id, hash, type, format, size) of artifacts whose hash starts with ``prefix`` (hex)."""
        return (
            self._connection()
            .execute(
                "SELECT id, hash, type, format, size FROM artifacts WHERE hash >= ? AND hash < ? LIMIT ?",
                (prefix, prefix + "g", limit),
            )
            .fetchall()
        )

    def artifact_events(self, artifact_id: int, kind: str) -> list[tuple[int, str, str, str]]:
        """(execution id, run id, step, name) of executions that read (INPUT) or wrote (OUTPUT) an artifact."""
        return (
            self._connection()
            .execute(
                "SELECT e.id, e.run_id, e.step, ev.name FROM events ev JOIN executions e ON e.id = ev.execution_id"
                " WHERE ev.artifact_id=? AND ev.type=? ORDER BY e.id",
                (artifact_id, kind),
            )
            .fetchall()
        )

    def execution_rows(
        self,
        columns: str,
        *,
        run_id: str | None = None,
        execution_id: int | None = None,
        missing_code_hash: bool = False,
    ) -> list[tuple]:
        """Rows of ``executions`` (``columns`` is the caller's fixed column list), by run, by id, or lacking a code hash."""
        query, args = f"SELECT {columns} FROM executions", ()
        if run_id is not None:
            query, args = query + " WHERE run_id=? ORDER BY id", (run_id,)
        elif execution_id is not None:
            query, args = query + " WHERE id=?", (execution_id,)
        elif missing_code_hash:
            query += " WHERE code_hash IS NULL AND state IN ('done','cached')"
        return self._connection().execute(query, args).fetchall()

    def execution_events(self, execution_ids: list[int]) -> list[tuple]:
        """(execution id, INPUT/OUTPUT, name, artifact id, hash, type, format, size) for those executions."""
        if not execution_ids:
            return []
        marks = ",".join("?" * len(execution_ids))
        return (
            self._connection()
            .execute(
                "SELECT ev.execution_id, ev.type, ev.name, a.id, a.hash, a.type, a.format, a.size FROM events ev"
                f" JOIN artifacts a ON a.id = ev.artifact_id WHERE ev.execution_id IN ({marks})",
                tuple(execution_ids),
            )
            .fetchall()
        )

    def set_code_hashes(self, updates: list[tuple[str, int]]) -> None:
        """Record (code hash, execution id) pairs."""
        if updates:
            with self._db() as db:
                db.executemany("UPDATE executions SET code_hash=? WHERE id=?", updates)

    def totals(self) -> tuple[int, float | None, int]:
        """(number of runs, oldest start, bytes of all indexed values): gc's cheap "is anything over?" check."""
        conn = self._connection()
        count, oldest = conn.execute("SELECT COUNT(*), MIN(started) FROM runs").fetchone()
        size = conn.execute("SELECT COALESCE(SUM(size), 0) FROM artifacts").fetchone()[0]
        return count, oldest, size

    # -- the shared store ----------------------------------------------------------------------
    def sync(self, force: bool = False) -> int:
        """Import runs published to the shared store since the last sync (at most once a second per RunStore
        unless ``force``); a store that cannot be reached is one line on stderr and the local index is used."""
        if self.remote is None:
            return 0
        if not force and time.monotonic() - getattr(self, "_synced", -10.0) < 1.0:
            return 0
        from .backends import RemoteError

        self._synced = time.monotonic()
        try:
            return self.remote.sync(self)
        except RemoteError as exc:
            print(f"nbmagic: {exc} (showing the runs known here)", file=sys.stderr)
            return 0

    def publish_pending(self) -> list[str]:
        """Publish this store's finished runs not yet in the shared store; returns the run ids published. A
        failure is one line on stderr: the runs stay queued and go with the next run."""
        if self.remote is None:
            return []
        from .backends import RemoteError
        from .objects import StoreError

        uri = str(self.remote.uri)
        queued = [
            r[0]
            for r in self._connection().execute(
                "SELECT o.run_id FROM remote_outbox o JOIN runs r ON r.id = o.run_id"
                " WHERE o.uri=? AND r.status NOT IN ('running','pending') ORDER BY o.queued",
                (uri,),
            )
        ]
        done = []
        for run_id in queued:
            try:
                self.remote.publish(self, run_id)
            except (RemoteError, StoreError) as exc:
                print(
                    f"nbmagic: run {run_id} is recorded here but not in {uri}: {exc}; it is published with the next run",
                    file=sys.stderr,
                )
                if isinstance(exc, RemoteError):
                    break
                continue  # this run's value is missing: the runs after it still go
            with self._db() as db:
                db.execute("DELETE FROM remote_outbox WHERE uri=? AND run_id=?", (uri, run_id))
            done.append(run_id)
            self._publish_shared_extras(run_id)
        return done

    def _publish_shared_extras(self, run_id: str) -> None:
        """After a run's record: its steps' cache entries and logs (a failure is one line; the run stays shared)."""
        from .backends import RemoteError
        from .objects import StoreError
        from .shared_cache import publish_run as publish_entries
        from .shared_logs import publish_run as publish_logs

        try:
            publish_entries(self, run_id)
            publish_logs(self, run_id)
        except (RemoteError, StoreError, OSError) as exc:
            print(
                f"nbmagic: run {run_id} is in {self.remote.uri} but its cache entries or step logs are not: {exc}",
                file=sys.stderr,
            )

    def export_run(self, run_id: str) -> dict[str, Any]:
        """A run as one self-contained record (run row, DAG, experiment, executions with their values)."""
        conn = self._connection()
        row = conn.execute(f"SELECT {self._RUN_COLUMNS}, dag FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise NbMagicError(f"no run {run_id!r} in the store")
        record = self._record(row[:-1])
        run = {name: getattr(record, name) for name in self._RUN_COLUMNS.replace(" ", "").split(",")}
        run["dag"] = json.loads(row[-1]) if row[-1] else None
        steps = self.step_rows(run_id)
        values: dict[int, dict[str, dict[str, Any]]] = {}
        for ex_id, kind, name, _aid, digest, type_, fmt, size in self.execution_events([s["id"] for s in steps]):
            ref = {"hash": digest, "type": type_, "format": fmt, "size": size, "name": name}
            values.setdefault(ex_id, {}).setdefault("inputs" if kind == "INPUT" else "outputs", {})[name] = ref
        executions = []
        for step in steps:
            props = json.loads(step["properties"] or "{}")
            reused = props.pop("reused_execution", None)
            if step["cached"]:
                props["not_kept"] = self.cached_not_kept(step["cache_key"], reused)
                origin = self._execution_origin(reused)
                if origin is not None:  # ids are this index's own: the execution it reused goes by run and step
                    props["reused_from"] = origin
            executions.append(
                {
                    **{k: step[k] for k in ("step", "state", "cached", "started", "ended", "error", "traceback")},
                    **{k: step[k] for k in ("cache_key", "code_hash")},
                    "properties": props,
                    "environment": json.loads(step["environment"]) if step["environment"] else None,
                    "inputs": values.get(step["id"], {}).get("inputs", {}),
                    "outputs": values.get(step["id"], {}).get("outputs", {}),
                }
            )
        experiment = None
        if record.experiment:
            experiment = {"name": record.experiment, "properties": self.experiment_properties(record.experiment) or {}}
        return {"format": 1, "run": run, "experiment": experiment, "executions": executions, "exported": time.time()}

    def _execution_origin(self, execution_id: Any) -> dict[str, str] | None:
        if not isinstance(execution_id, int):
            return None
        row = self._connection().execute("SELECT run_id, step FROM executions WHERE id=?", (execution_id,)).fetchone()
        return {"run": row[0], "step": row[1]} if row else None

    def import_runs(self, records: list[dict[str, Any]]) -> int:
        """Add (or complete) runs published elsewhere, in one transaction; a run made by this store is never
        overwritten. Returns how many records added something."""
        added, failed = 0, []
        with self._db() as db:
            for record in records:  # each in its own savepoint: one bad record does not stop the others
                db.execute("SAVEPOINT import_run")
                try:
                    added += self._import_run(db, record)
                except (KeyError, TypeError, ValueError, AttributeError, sqlite3.IntegrityError):
                    db.execute("ROLLBACK TO import_run")
                    failed.append(str((record.get("run") or {}).get("id", "?")) if isinstance(record, dict) else "?")
                db.execute("RELEASE import_run")
        if failed:
            print(f"nbmagic: skipped {len(failed)} malformed run record(s), e.g. run {failed[0]!r}", file=sys.stderr)
        return added

    def import_run(self, record: dict[str, Any]) -> bool:
        """:meth:`import_runs` of one record."""
        return self.import_runs([record]) == 1

    def _import_run(self, db: sqlite3.Connection, record: dict[str, Any]) -> bool:
        run = record["run"]
        run_id = str(run.get("id", ""))
        if not run_id or not all(c.isalnum() or c in "-_." for c in run_id) or run_id.startswith("."):
            return False
        hashes = [
            ref.get("hash")
            for ex in record.get("executions") or []
            for k in ("inputs", "outputs")
            for ref in (ex.get(k) or {}).values()
        ]
        if not all(isinstance(h, str) and _HASH.fullmatch(h) for h in hashes):
            return False  # a record naming something that is not a value hash is not imported
        row = db.execute("SELECT owner_pid FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is not None and row[0] is not None:
            return False  # this store's own run (published from here)
        experiment = record.get("experiment") or None
        if experiment and experiment.get("name"):
            context = self._context(db, "experiment", str(experiment["name"]))
            old = db.execute("SELECT properties FROM contexts WHERE id=?", (context,)).fetchone()[0]
            merged = {**json.loads(old or "{}"), **(experiment.get("properties") or {})}
            db.execute("UPDATE contexts SET properties=? WHERE id=?", (json.dumps(merged), context))
        self._context(db, "pipeline", str(run["pipeline"]))
        context = self._context(db, "run", run_id, {"pipeline": run["pipeline"]})
        executions = record.get("executions") or []
        metrics = dict(run.get("metrics") or {})
        status, ended = run["status"], None
        if row is not None:  # a run published in parts (one record per KFP step): merge
            old_metrics, old_params, ended = db.execute(
                "SELECT metrics, parameters, ended FROM runs WHERE id=?", (run_id,)
            ).fetchone()
            metrics = {**json.loads(old_metrics or "{}"), **metrics}
            params = {**json.loads(old_params or "{}"), **(run.get("parameters") or {})}
            db.execute(
                "UPDATE runs SET parameters=?, started=MIN(started, ?) WHERE id=?",
                (json.dumps(params), float(run["started"]), run_id),
            )
        else:
            db.execute(
                "INSERT INTO runs(id, pipeline, status, kind, parameters, notebook, experiment, started, steps,"
                " url, context_id) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    run["pipeline"],
                    status,
                    run.get("kind") or "local",
                    json.dumps(run.get("parameters") or {}),
                    run.get("notebook"),
                    run.get("experiment"),
                    float(run["started"]),
                    int(run.get("steps") or len(executions)),
                    run.get("url"),
                    context,
                ),
            )
        steps = [*(run.get("step_names") or []), *(ex.get("step") for ex in record.get("executions") or [])]
        if not all(
            isinstance(s, str) and s and not s.startswith(".") and all(c.isalnum() or c in "-_." for c in s)
            for s in steps
        ):
            return False  # step names become paths, like run ids
        for step in run.get("step_names") or []:  # a run published in parts: its steps not recorded yet wait
            db.execute(
                "INSERT OR IGNORE INTO executions(run_id, step, state) VALUES (?,?,?)", (run_id, step, "pending")
            )
        for ex in executions:
            db.execute(
                "INSERT OR IGNORE INTO executions(run_id, step, state) VALUES (?,?,?)",
                (run_id, ex["step"], ex["state"]),
            )
            (ex_id,) = db.execute(
                "SELECT id FROM executions WHERE run_id=? AND step=?", (run_id, ex["step"])
            ).fetchone()
            props = dict(ex.get("properties") or {})
            props.pop("reused_execution", None)  # another index's id: what it reused goes by run and step
            origin = props.get("reused_from")
            if isinstance(origin, dict):  # lineage follows it here too
                found = db.execute(
                    "SELECT id FROM executions WHERE run_id=? AND step=?",
                    (str(origin.get("run")), str(origin.get("step"))),
                ).fetchone()
                if found:
                    props["reused_execution"] = found[0]
            db.execute(
                "UPDATE executions SET state=?, cache_key=?, code_hash=?, cached=?, started=?, ended=?, error=?,"
                " traceback=?, properties=?, environment=? WHERE id=?",
                (
                    ex["state"],
                    ex.get("cache_key"),
                    ex.get("code_hash"),
                    int(bool(ex.get("cached"))),
                    ex.get("started"),
                    ex.get("ended"),
                    ex.get("error"),
                    ex.get("traceback"),
                    json.dumps(props),
                    json.dumps(ex["environment"]) if ex.get("environment") else None,
                    ex_id,
                ),
            )
            db.execute("INSERT OR IGNORE INTO associations VALUES (?,?)", (context, ex_id))
            for kind, key in (("INPUT", "inputs"), ("OUTPUT", "outputs")):
                for name, ref in (ex.get(key) or {}).items():
                    artifact = self._artifact(db, ref)
                    db.execute("INSERT OR REPLACE INTO events VALUES (?,?,?,?)", (ex_id, artifact, kind, name))
                    db.execute("INSERT OR IGNORE INTO attributions VALUES (?,?)", (context, artifact))
        if run.get("step_names"):  # published in parts: the run is as far as its steps are
            states = [r[0] for r in db.execute("SELECT state FROM executions WHERE run_id=?", (run_id,))]
            if any(s in ("failed", "timed_out") for s in states):
                status = "failed"
            elif states and all(s in ("done", "cached") for s in states):
                status = "done"
            else:
                status = "running"
        cached = db.execute("SELECT COUNT(*) FROM executions WHERE run_id=? AND cached=1", (run_id,)).fetchone()[0]
        db.execute(
            "UPDATE runs SET status=?, metrics=?, ended=?, cached=?, error=COALESCE(?, error),"
            " dag=COALESCE(?, dag), experiment=COALESCE(experiment, ?) WHERE id=?",
            (
                status,
                json.dumps(metrics),
                max([t for t in (ended, run.get("ended")) if t is not None], default=None),
                cached,
                run.get("error"),
                json.dumps(run["dag"]) if run.get("dag") else None,
                run.get("experiment"),
                run_id,
            ),
        )
        return True

    def remote_seen(self, uri: str, keys: list[str]) -> set[str]:
        """Which of ``keys`` were already imported (or judged) from ``uri``."""
        conn, seen = self._connection(), set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            seen.update(
                r[0]
                for r in conn.execute(f"SELECT key FROM remote_seen WHERE uri=? AND key IN ({marks})", (uri, *chunk))
            )
        return seen

    def remote_active_runs(self) -> dict[str, tuple[str, float]]:
        """run id -> (status, started) of runs imported from the shared store that are "running" or "lost"."""
        rows = self._connection().execute(
            "SELECT id, status, started FROM runs WHERE status IN ('running','lost') AND owner_pid IS NULL"
        )
        return {run_id: (status, started or 0.0) for run_id, status, started in rows.fetchall()}

    def last_step_ends(self) -> dict[str, float]:
        """run id -> when its last step ended, for runs with a step that ended."""
        rows = self._connection().execute(
            "SELECT run_id, MAX(ended) FROM executions WHERE ended IS NOT NULL GROUP BY run_id"
        )
        return {run_id: ended for run_id, ended in rows.fetchall() if ended is not None}

    def remote_record_runs(self, uri: str) -> dict[str, str]:
        """record key -> run id of every record imported from ``uri``."""
        rows = self._connection().execute(
            "SELECT key, run_id FROM remote_seen WHERE uri=? AND run_id IS NOT NULL", (uri,)
        )
        return dict(rows.fetchall())

    def referenced_hashes(self, exclude: set[str] = frozenset()) -> set[str]:
        """Hashes of every value a run (other than those in ``exclude``) read or wrote."""
        rows = self._connection().execute(
            "SELECT DISTINCT e.run_id, a.hash FROM events ev JOIN executions e ON e.id = ev.execution_id"
            " JOIN artifacts a ON a.id = ev.artifact_id"
        )
        return {digest for run_id, digest in rows if run_id not in exclude}

    def forget_remote_runs(self, uri: str, run_ids: set[str]) -> None:
        """Forget that the records of ``run_ids`` (and every segment) were imported from ``uri``, so the next
        sync imports again those still in the store (after a gc that dropped them here and then stopped)."""
        with self._db() as db:
            db.executemany("DELETE FROM remote_seen WHERE uri=? AND run_id=?", [(uri, r) for r in run_ids])
            db.execute("DELETE FROM remote_seen WHERE uri=? AND key LIKE 'index/%'", (uri,))

    def mark_remote_seen(self, uri: str, keys: list[tuple[str, str | None]]) -> None:
        if keys:
            with self._db() as db:
                db.executemany("INSERT OR IGNORE INTO remote_seen VALUES (?,?,?)", [(uri, k, r) for k, r in keys])

    # -- gc ------------------------------------------------------------------------------------
    def gc_snapshot(self) -> GcSnapshot:
        """Everything gc needs to count references, read in one transaction."""
        with self._db() as db:
            return GcSnapshot(
                runs=db.execute(
                    "SELECT id, started, status, kind, experiment, metrics FROM runs ORDER BY started DESC, id DESC"
                ).fetchall(),
                executions=db.execute("SELECT id, run_id, cache_key FROM executions").fetchall(),
                events=db.execute("SELECT DISTINCT execution_id, artifact_id FROM events").fetchall(),
                artifacts=db.execute("SELECT id, hash, size FROM artifacts").fetchall(),
                cache=db.execute("SELECT key, execution_id, outputs FROM cache").fetchall(),
                reused=db.execute(
                    "SELECT id, properties FROM executions WHERE cached=1 AND code_hash IS NULL"
                ).fetchall(),
            )

    def gc_remove(
        self,
        runs: set[str],
        executions: set[int],
        artifacts: set[int],
        dead_keys: set[str],
        code_hashes: list[tuple[str, int]],
    ) -> set[str]:
        """Drop runs, their executions, dead cache entries and artifacts in one transaction.

        Returns the hashes of artifacts that a run started meanwhile recorded (they stay).
        """
        with self._db() as db:
            if code_hashes:
                db.executemany("UPDATE executions SET code_hash=? WHERE id=?", code_hashes)
            for table, column in (("gc_runs", "id TEXT"), ("gc_execs", "id INTEGER"), ("gc_artifacts", "id INTEGER")):
                db.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table}({column} PRIMARY KEY)")
                db.execute(f"DELETE FROM {table}")
            db.executemany("INSERT INTO gc_runs VALUES (?)", [(r,) for r in runs])
            db.executemany("INSERT INTO gc_execs VALUES (?)", [(e,) for e in executions])
            db.executemany("INSERT INTO gc_artifacts VALUES (?)", [(a,) for a in artifacts])
            # a run that started meanwhile may have recorded one of these values: it stays
            db.execute(
                "DELETE FROM gc_artifacts WHERE id IN (SELECT artifact_id FROM events WHERE execution_id NOT IN gc_execs)"
            )
            # live cache entries made by a dropped execution now point at a kept execution with the same key
            for (key,) in db.execute("SELECT key FROM cache WHERE execution_id IN gc_execs").fetchall():
                if key in dead_keys:
                    continue
                kept = db.execute(
                    "SELECT id FROM executions WHERE cache_key=? AND id NOT IN gc_execs AND state IN ('done','cached')"
                    " ORDER BY id LIMIT 1",
                    (key,),
                ).fetchone()
                if kept:
                    db.execute("UPDATE cache SET execution_id=? WHERE key=?", (kept[0], key))
            db.executemany("DELETE FROM cache WHERE key=?", [(k,) for k in dead_keys])
            db.execute("DELETE FROM events WHERE execution_id IN gc_execs")
            db.execute("DELETE FROM associations WHERE execution_id IN gc_execs")
            db.execute(
                "DELETE FROM attributions WHERE context_id IN (SELECT id FROM contexts WHERE type='run' AND name IN gc_runs)"
            )
            db.execute("DELETE FROM contexts WHERE type='run' AND name IN gc_runs")
            db.execute("DELETE FROM executions WHERE id IN gc_execs")
            db.execute("DELETE FROM runs WHERE id IN gc_runs")
            db.execute("DELETE FROM attributions WHERE artifact_id IN gc_artifacts")
            db.execute("DELETE FROM artifacts WHERE id IN gc_artifacts")
            return {
                row[0] for row in db.execute("SELECT hash FROM artifacts WHERE id IN (SELECT artifact_id FROM events)")
            }

    def forget_artifacts(self, hashes: set[str]) -> None:
        """Drop index rows of values that are gone from disk and that no execution refers to."""
        if not hashes:
            return
        with self._db() as db:
            for digest in hashes:
                db.execute(
                    "DELETE FROM artifacts WHERE hash=? AND id NOT IN (SELECT artifact_id FROM events)", (digest,)
                )


@dataclass
class GcSnapshot:
    """The index rows gc counts references over (see :meth:`RunStore.gc_snapshot`)."""

    runs: list[tuple]
    executions: list[tuple]
    events: list[tuple]
    artifacts: list[tuple]
    cache: list[tuple]
    reused: list[tuple]
