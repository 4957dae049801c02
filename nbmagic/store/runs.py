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

import json
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import home
from .processes import alive

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
    used REAL NOT NULL);
"""

SCHEMA_VERSION = 2
# (version, table, column, declaration): additive, so an older store gains them on first open
MIGRATIONS = (
    (2, "runs", "dag", "TEXT"),
    (2, "executions", "environment", "TEXT"),
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


def new_run_id() -> str:
    """Sortable by time, unique across processes: ``YYYYmmdd-HHMMSS-xxxxxx``."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime()) + "-" + uuid.uuid4().hex[:6]


class RunStore:
    """The on-disk store: values under ``objects/``, logs under ``runs/``, the index in ``index.sqlite``."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root else home() / "store"
        self.root.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self._connection()
        conn.executescript(SCHEMA)
        self._migrate(conn)

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

    # -- plumbing --------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.root / "index.sqlite", timeout=60, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            self._local.conn = conn
        return conn

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: Any, *_: Any) -> None:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def _db(self) -> RunStore._Tx:
        return RunStore._Tx(self._connection())

    @property
    def objects(self):  # noqa: ANN201 - ObjectStore, imported lazily
        from .objects import ObjectStore

        store = getattr(self, "_objects", None)
        if store is None:
            store = self._objects = ObjectStore(self.root)
        return store

    def run_dir(self, run_id: str) -> Path:
        path = self.root / "runs" / run_id
        path.mkdir(parents=True, exist_ok=True)
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
            from ..errors import NbMagicError

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
        with self._db() as db:
            cached = db.execute("SELECT COUNT(*) FROM executions WHERE run_id=? AND cached=1", (run_id,)).fetchone()[0]
            db.execute(
                "UPDATE runs SET status=?, metrics=?, ended=?, cached=?, error=? WHERE id=?",
                (status, json.dumps(metrics), time.time(), cached, error, run_id),
            )

    def update_run(self, run_id: str, **fields: Any) -> None:
        allowed = {"status", "metrics", "ended", "error", "url"}
        sets = {k: (json.dumps(v) if k == "metrics" else v) for k, v in fields.items() if k in allowed}
        if not sets:
            return
        with self._db() as db:
            db.execute(f"UPDATE runs SET {', '.join(f'{k}=?' for k in sets)} WHERE id=?", (*sets.values(), run_id))

    def _record(self, row: sqlite3.Row | tuple) -> RunRecord:
        (
            rid,
            pipeline,
            status,
            kind,
            params,
            metrics,
            notebook,
            experiment,
            started,
            ended,
            steps,
            cached,
            error,
            url,
        ) = row
        return RunRecord(
            rid,
            pipeline,
            status,
            kind,
            json.loads(params),
            json.loads(metrics),
            notebook,
            experiment,
            started,
            ended,
            steps,
            cached,
            error,
            url,
        )

    _RUN_COLUMNS = "id, pipeline, status, kind, parameters, metrics, notebook, experiment, started, ended, steps, cached, error, url"

    def get_run(self, run_id: str) -> RunRecord | None:
        row = self._connection().execute(f"SELECT {self._RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)).fetchone()
        return self._record(row) if row else None

    def list_runs(
        self, limit: int | None = None, pipeline: str | None = None, experiment: str | None = None
    ) -> list[RunRecord]:
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
        """A run id from an id, a unique prefix, or ``last``; a clear error otherwise."""
        from ..errors import NbMagicError

        conn = self._connection()
        if ref == "last":
            row = conn.execute("SELECT id FROM runs WHERE kind='local' ORDER BY started DESC LIMIT 1").fetchone()
            if not row:
                raise NbMagicError("no runs in the store yet")
            return row[0]
        rows = conn.execute(
            "SELECT id FROM runs WHERE id LIKE ? ORDER BY started DESC LIMIT 2", (ref.replace("%", "") + "%",)
        ).fetchall()
        if not rows:
            raise NbMagicError(f"no run {ref!r} in the store")
        if len(rows) > 1 and rows[0][0] != ref:
            raise NbMagicError(f"run prefix {ref!r} is ambiguous ({rows[0][0]}, {rows[1][0]}, …)")
        return rows[0][0]

    def mark_torn_runs(self) -> int:
        """Runs left 'running' by a process that no longer exists are failed (e.g. after kill -9)."""
        conn = self._connection()
        torn = []
        for run_id, pid in conn.execute(
            "SELECT id, owner_pid FROM runs WHERE status IN ('running','pending') AND kind='local'"
        ):
            if pid and not alive(pid):
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
    def cache_get(self, key: str) -> CacheEntry | None:
        row = (
            self._connection()
            .execute("SELECT key, step, execution_id, outputs, metrics, not_kept FROM cache WHERE key=?", (key,))
            .fetchone()
        )
        if row is None:
            return None
        entry = CacheEntry(row[0], row[1], row[2], json.loads(row[3]), json.loads(row[4]), json.loads(row[5]))
        if not all(self.objects.exists(ref["hash"]) for ref in entry.outputs.values()):
            return None  # a value was collected or lost: run the step again
        with self._db() as db:
            db.execute("UPDATE cache SET used=? WHERE key=?", (time.time(), key))
        return entry

    def cache_put(
        self,
        key: str,
        step: str,
        execution_id: int,
        outputs: dict[str, Any],
        metrics: dict[str, float],
        not_kept: dict[str, str],
    ) -> None:
        now = time.time()
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO cache VALUES (?,?,?,?,?,?,?,?)",
                (key, step, execution_id, json.dumps(outputs), json.dumps(metrics), json.dumps(not_kept), now, now),
            )
