"""Interactive reuse: a ``%%step`` cell whose code and inputs did not change loads its results from the store.

The key is the local runner's own (:func:`nbmagic.run.cache_key.cache_key`), with the inputs' content hashes
taken from the kernel's current values, so results flow both ways: a cell reuses what a run computed, and a run
reuses what the kernel computed. A cell is only reused when every value it assigned was kept; anything that
cannot be hashed or stored makes the cell simply run.
"""

from __future__ import annotations

import atexit
import io
import os
import pickle
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from typing import Any
from weakref import WeakKeyDictionary

from ..errors import NbMagicError
from ..pipeline.analysis import analyze
from ..pipeline.model import PipelinePlan, StepPlan
from ..pipeline.settings import StepSettings, merge
from ..store.lineage import code_hash
from ..store.runs import RunStore
from .cache_key import cache_key, environment
from .reuse_classes import changed_class, class_state
from .reuse_kernel import bound_by_run, dynamic_names, loop_sizes, shared_elsewhere, snapshot
from .reuse_links import TooLarge, follow, links, notebook_code
from .reuse_parts import mark_mode, other_mode, valid


class NotReusable(Exception):
    """The cell's key cannot be computed (a value that cannot be hashed, a missing file): it simply runs."""


def reuse_wanted(plan: PipelinePlan, step: StepPlan) -> bool:
    """Reuse is on for the step (``--reuse`` on it or on ``%pipeline_config``, not ``--no-reuse``/``--no-cache``)."""
    settings = merged_settings(plan, step)
    return bool(settings.reuse) and settings.cache


def merged_settings(plan: PipelinePlan, step: StepPlan) -> StepSettings:
    return merge(plan.defaults, step.settings)


class ValueHasher:
    """Store hashes of kernel values, computed cheaply with xxh3 and remembered by content.

    A numpy array's store hash is computed straight from its buffer (no serialization). Any other value is
    pickled (protocol 5, large buffers out of band) and that stream is digested with xxh3: a digest already seen
    when the value was loaded from, or put into, the store gives its store hash without storing it again.
    """

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._known: dict[str, str] = {}  # content digest -> store hash

    def digest(self, value: Any) -> str:
        import xxhash

        buffers: list[pickle.PickleBuffer] = []
        try:
            stream = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        except Exception as exc:  # noqa: BLE001 - anything unpicklable cannot be compared
            raise NotReusable(f"{type(value).__name__} cannot be hashed ({type(exc).__name__})") from None
        h = xxhash.xxh3_128()
        h.update(f"{type(value).__module__}.{type(value).__qualname__}\0".encode())
        h.update(len(stream).to_bytes(8, "little"))
        h.update(stream)
        for buffer in buffers:
            raw = buffer.raw()
            h.update(raw.nbytes.to_bytes(8, "little"))
            h.update(raw)
        return h.hexdigest()

    def remember(self, value: Any, store_hash: str) -> None:
        """Note that ``value`` (as it is now) is stored under ``store_hash``."""
        if not _has_fingerprint(value):  # an array's store hash comes from its memory: nothing to note
            try:
                self._known[self.digest(value)] = store_hash
            except NotReusable:
                pass

    def store_hash(self, value: Any, name: str, secrets: tuple[str, ...] = ()) -> str:
        """The hash the store keeps ``value`` under; stores it when its content was never seen."""
        known = _fingerprint(value, name)
        if known is not None:
            return known
        digest = self.digest(value)
        found = self._known.get(digest)
        if found is not None and self.store.objects.exists(found):
            return found
        try:
            ref = self.store.objects.put(value, name, secrets)
        except Exception as exc:  # noqa: BLE001 - unstorable (or a secret): the cell runs
            raise NotReusable(f"variable {name!r} cannot be stored ({exc})") from None
        self._known[digest] = ref.hash
        return ref.hash


def _has_fingerprint(value: Any) -> bool:
    """:func:`_fingerprint` gives ``value``'s store hash (numpy arrays and scalars), told without hashing it."""
    from ..runtime.marshal import npy

    if npy.is_ndarray(value):
        return not value.dtype.hasobject
    return npy.is_scalar(value) and not value.dtype.hasobject


def _fingerprint(value: Any, name: str = "value") -> str | None:
    from ..runtime import marshal

    try:
        return marshal.fingerprint(value, name)
    except Exception:  # noqa: BLE001 - no fast path for this value
        return None


class _Tee(io.TextIOBase):
    """Writes go to the real stream and are kept, so a reused cell can replay what it printed."""

    def __init__(self, real: Any, kept: list[str]) -> None:
        self.real, self.kept = real, kept

    def write(self, text: str) -> int:
        self.kept.append(text)
        return self.real.write(text)

    def on_next_cell(self, info: Any = None) -> None:
        self.flush()

    def flush(self) -> None:
        self.real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Reuse:
    """One kernel's reuse: the value hasher, the keys of the steps run so far, and the session run record."""

    def __init__(self, store: RunStore | None = None) -> None:
        self._store = store
        self._hasher: ValueHasher | None = None
        self.keys: dict[str, str] = {}  # step -> key of its latest reuse-enabled execution in this kernel
        self.session: str | None = None  # run id of this kernel's current notebook session in the store
        self._metrics: dict[str, float] = {}
        self._recorded: set[str] = set()  # steps recorded in the current session run
        self._pool: Any = None
        self._pending: list[Any] = []

    @property
    def store(self) -> RunStore:
        if self._store is None:
            self._store = RunStore()
        return self._store

    @property
    def hasher(self) -> ValueHasher:
        if self._hasher is None:
            self._hasher = ValueHasher(self.store)
        return self._hasher

    # -- the key ----------------------------------------------------------------------------------
    def key(self, plan: PipelinePlan, step: StepPlan, namespace: dict[str, Any]) -> tuple[str, dict, dict]:
        """(cache key, parameter values, input hashes) for ``step`` from the kernel's current values."""
        edited = _edited_module(step.modules)
        if edited is not None:
            raise NotReusable(
                f"local module {edited!r} changed on disk after the kernel imported it; restart the kernel or"
                " importlib.reload it"
            )
        values: dict[str, Any] = {}
        for name in step.parameters:
            if name not in namespace:
                raise NotReusable(f"parameter {name!r} is not set in the kernel")
            try:
                values[name] = plan.parameters[name].coerce(namespace[name])
            except NbMagicError as exc:
                raise NotReusable(str(exc)) from None
        inputs: dict[str, str] = {}
        hidden = secrets(plan) if step.inputs else ()
        for var in step.inputs:
            if var not in namespace:
                raise NotReusable(f"variable {var!r} is not set in the kernel")
            inputs[var] = self.hasher.store_hash(namespace[var], var, hidden)
        return self._key(plan, step, values, inputs), values, inputs

    def _key(self, plan: PipelinePlan, step: StepPlan, values: dict[str, Any], inputs: dict[str, str]) -> str:
        after: dict[str, str] = {}
        for name in step.explicit_after:
            if name not in self.keys:
                raise NotReusable(f"step {name!r} it runs after has not run with reuse in this kernel")
            after[name] = self.keys[name]
        from .cache_key import local_unsure

        unsure = local_unsure(step.modules)
        if unsure:
            raise NotReusable(unsure)
        settings = merged_settings(plan, step)
        try:
            return cache_key(step if settings == step.settings else _with(step, settings), values, inputs, after)
        except NbMagicError as exc:
            raise NotReusable(str(exc)) from None

    # -- a cell ---------------------------------------------------------------------------------------
    def run_cell(
        self,
        plan: PipelinePlan,
        step: StepPlan,
        namespace: dict[str, Any],
        run_body: Callable[[], None],
        replan: Callable[[], PipelinePlan] | None = None,
    ) -> str:
        """Reuse the step's stored results or run it and store them; returns ``"reused"``, ``"stored"`` or ``"ran"``.

        ``replan`` builds the plan again (after a change in place was learned, the step's key changes)."""
        started = time.time()
        self.flush()
        try:
            key, values, inputs = self.key(plan, step, namespace)
        except NotReusable as exc:
            reason = str(exc)
        else:
            reason = None
        if reason is not None:
            self.keys.pop(step.name, None)
            print(f"{step.name}: runs (cannot be reused: {reason})", flush=True)
            run_body()
            return "ran"
        from ..store.shared_cache import Wanted

        # a parameter reported as a metric is the kernel's own value, not a stored one
        needed = set(step.outputs) | (set(step.metrics) & set(step.writes))
        carried = _carried(step, namespace)
        followed = any(step.name in other.explicit_after for other in plan.steps)
        wanted = Wanted(step.name, frozenset(needed), carried=carried, all_kept=True, followed=followed)
        entry = self.store.cache_get(key, touch=False, wanted=wanted)  # marked used with the record, later
        stale = None if entry is None else _stale(entry.carried, carried)
        found = key
        if (entry is None or stale is not None) and carried and None not in carried.values():
            # results the kernel computed with carried values other than its cells give (kept under its own key)
            own = self.store.cache_get(_kernel_key(key, carried), touch=False, wanted=wanted)
            if own is not None:
                found, entry, stale = _kernel_key(key, carried), own, None
        if stale is not None:
            print(
                f"{step.name}: runs (cannot be reused: {stale!r} is not the value its stored results were computed"
                " with)",
                flush=True,
            )
        if entry is not None and stale is None and entry.not_kept:
            name, why = next(iter(entry.not_kept.items()))
            print(f"{step.name}: runs (cannot be reused: {name!r} was not kept: {why})", flush=True)
        refused = (
            None
            if entry is None
            else next((r["kernel_reuse"] for r in entry.outputs.values() if r.get("kernel_reuse")), None)
        )
        if entry is not None and stale is None and not entry.not_kept and refused:
            print(f"{step.name}: runs (cannot be reused: {refused})", flush=True)
            entry = None
        mode = None if entry is None or stale is not None or entry.not_kept else other_mode(entry.outputs)
        if mode is not None:
            print(f"{step.name}: runs (cannot be reused: {mode})", flush=True)
            entry = None
        if entry is not None and stale is None and not entry.not_kept and needed <= set(entry.outputs):
            always, sometimes = _deleted(step.cell.code)
            if sometimes:
                print(
                    f"{step.name}: runs (cannot be reused: it deletes {sorted(sometimes)[0]!r} on some paths only)",
                    flush=True,
                )
                entry = None
        if entry is not None and stale is None and not entry.not_kept and needed <= set(entry.outputs):
            loaded = self._load(entry.outputs, step.cell.code, step.writes, namespace)
            if loaded is None:
                lacking = next(
                    (w for w in step.writes if w not in entry.outputs and not _imports(step.cell.code, [w])), None
                )
                print(
                    f"{step.name}: runs (cannot be reused: "
                    + (
                        f"its stored results do not hold {lacking!r}, which it assigns)"
                        if lacking is not None
                        else "a stored value of it cannot be read)"
                    ),
                    flush=True,
                )
            try:
                unbound = None if loaded is None else notebook_code(_by_value(loaded, entry.outputs), namespace)
            except Exception as exc:  # noqa: BLE001 - TooLarge, or an object that cannot be asked: not sure
                why = exc if isinstance(exc, TooLarge) else f"its values cannot be checked ({type(exc).__name__})"
                print(f"{step.name}: runs (cannot be reused: {why})", flush=True)
                loaded = unbound = None
            if unbound is not None:
                print(
                    f"{step.name}: runs (cannot be reused: {unbound!r} is a function defined in the notebook or holds"
                    " one, or of a class the step defines; loaded from the store it would not see the kernel's globals)",
                    flush=True,
                )
                loaded = None
            if loaded is not None:
                changing = _changing(step, loaded, namespace)
                try:
                    elsewhere = shared_elsewhere(changing, namespace, set(loaded)) if changing else None
                except Exception as exc:  # noqa: BLE001 - TooLarge, or an object that cannot be asked: not sure
                    elsewhere = (
                        f"the kernel's values take too much to check for others reaching {changing[0]!r}"
                        if isinstance(exc, TooLarge)
                        else f"the kernel's values cannot be checked ({type(exc).__name__})"
                    )
                if elsewhere is not None:
                    print(f"{step.name}: runs (cannot be reused: {elsewhere})", flush=True)
                    loaded = None
            if loaded is not None:
                for name in always - set(loaded):  # what running it leaves out of the kernel, reuse does too
                    namespace.pop(name, None)
                namespace.update(loaded)
                self.keys[step.name] = found
                source_run, log = self._earlier(entry.execution_id, step.name)
                if log:  # masked when it was kept; masked again with the secrets the step can read now
                    sys.stdout.write(mask(log, secrets(plan, step)))
                took = time.time() - started
                print(
                    f"{step.name}: reused from run {source_run} (code and inputs unchanged; {took:.2f} s)"
                    f" — %%step {step.name} --no-reuse to run it",
                    flush=True,
                )
                # indexed while the kernel goes on (the next reuse-enabled cell waits for it): the cell ends now
                self._later(
                    self._record,
                    plan,
                    step,
                    found,
                    values,
                    inputs,
                    entry.outputs,
                    entry.metrics,
                    started,
                    reused=entry.execution_id,
                )
                return "reused"
        # what the cell reads and does not assign (its inputs, values carried from ordinary cells) is fingerprinted
        # before and after, as a run's steps are: a change in place the code does not show is kept with the results
        from ..runtime.step import changed, fingerprint

        self.keys.pop(step.name, None)  # until it has run: a cell that raises leaves no key for --after edges
        watched = [n for n in dict.fromkeys([*step.inputs, *(n for _, n in step.carried)]) if n not in step.writes]
        before = {n: fingerprint(namespace[n]) for n in watched if n in namespace}
        try:
            classes: dict | None = class_state(namespace, {*analyze(step.cell.code).reads, *watched})
        except Exception:  # noqa: BLE001 - a class that cannot be looked at: the results are not reused
            classes = None
        names_before = snapshot(namespace)
        code_info = analyze(step.cell.code)
        sizes = loop_sizes(step.cell.code, namespace, set(code_info.reads) - set(step.writes) - code_info.mutated)
        kept: list[str] = []
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, kept), _Tee(err, kept)
        try:
            run_body()
        finally:
            sys.stdout, sys.stderr = out, err
        moved = changed(before, namespace)  # a value with no fingerprint counts as changed: kept, to be safe
        # every name the cell bound (re-binding the same object at its top level, as a repeated import does, counts:
        # a later reuse must bind it too), and what it changed in place; a name bound out of sight of its code, or
        # one it binds on some paths only and left as it was, makes its results not reusable
        always, sometimes = _deleted(step.cell.code)
        info = analyze(step.cell.code)
        read = {*info.reads, *step.inputs, *(n for _, n in step.carried)}
        deleted = always | sometimes
        bound, unseen = bound_by_run(
            names_before, namespace, step.cell.code, step.writes, info.mutated | set(moved), deleted, read, sizes
        )
        assigned = {n: namespace[n] for n in (*step.writes, *moved) if n in namespace and (n in bound or n in moved)}
        unseen = unseen or dynamic_names(step.cell.code)
        if unseen:
            key = ""
        hidden = secrets(plan, step)
        outputs, not_kept = self._put(assigned, hidden)
        if unseen and not not_kept:
            print(f"{step.name}: cannot be reused next time ({unseen})", flush=True)
        if not_kept:
            name = next(iter(not_kept))
            why = (
                "holds a secret"
                if not_kept[name] == SECRET
                else f"of type {type(assigned[name]).__qualname__} cannot be stored"
            )
            print(f"{step.name}: cannot be reused next time (variable {name!r} {why})", flush=True)
        try:
            reason, aliases = links(assigned, {n: namespace[n] for n in watched if n in namespace}, step.modules)
        except Exception as exc:  # noqa: BLE001 - the cell has run: not sure, so it runs next time
            reason, aliases = f"its values cannot be checked for shared objects ({type(exc).__name__})", {}
        for name, target in aliases.items():
            if name in outputs:
                outputs[name] = {**outputs[name], "alias": target}
        mark_mode(outputs)
        if reason and not not_kept and not unseen:
            # stored values load as separate objects: a later change through one name would miss the other
            print(f"{step.name}: cannot be reused next time ({reason})", flush=True)
            key = ""
        changed_cls = changed_class(classes) if classes else None
        why_cls = (
            "a notebook class cannot be looked at, so a change to it could not be seen"
            if classes is None
            else f"it changes class {changed_cls!r}; a reuse would not"
            if changed_cls
            else None
        )
        if why_cls and key and not not_kept and not unseen:
            print(f"{step.name}: cannot be reused next time ({why_cls})")
            key = ""
        if moved and not not_kept and key:
            key = self._learn(plan, step, moved, values, inputs, replan) or ""
        if key and not not_kept:
            self.keys[step.name] = key
        else:
            self.keys.pop(step.name, None)
        if key and not not_kept and carried and not _as_prelude_makes(step, carried):
            # the kernel's carried values are not what the notebook's cells give them (a later cell or an earlier
            # step changed one): a run would compute something else under the runner's key, so the results are
            # kept under a key of the kernel's own, which only a kernel holding the same values finds
            # a key made from a secret's fingerprint would name the entry (cache/<key>.json): nothing is kept
            secret = next((n for n in carried if hidden and _holds_secret(namespace.get(n), hidden)), None)
            key = _kernel_key(key, carried) if None not in carried.values() and secret is None else ""
            if secret is not None:
                print(f"{step.name}: cannot be reused next time (the value it carries in {secret!r} holds a secret)")
            if key:
                self.keys[step.name] = key
            else:
                self.keys.pop(step.name, None)
        reported = {**{n: namespace[n] for n in step.metrics if n in namespace}, **assigned}
        if carried and hidden:  # a secret's fingerprint is kept nowhere (the entry may be shared)
            carried = _without_secrets(carried, namespace, hidden)
        return self._store_results(
            plan, step, key, values, inputs, reported, outputs, not_kept, mask("".join(kept), hidden), started, carried
        )

    def _learn(
        self,
        plan: PipelinePlan,
        step: StepPlan,
        moved: list[str],
        values: dict[str, Any],
        inputs: dict[str, str],
        replan: Callable[[], PipelinePlan] | None,
    ) -> str | None:
        """The cell changed ``moved`` in place though its code does not show it: said in one line and kept (as a
        run does), so later steps read them from this one. Returns the step's key under the plan that knows it
        (None when it cannot be computed: the results are then not cached)."""
        from ..pipeline.learned import remember, report_once

        remember(step.cell.code, moved)
        for var in moved:
            message = report_once(step.name, var, None)
            if message:
                print(message, flush=True)
        if replan is None:
            return None
        try:
            plan = replan()
            step = plan.step(step.name)
        except NbMagicError:
            return None
        if set(step.parameters) != set(values) or set(step.inputs) != set(inputs):
            return None
        try:
            return self._key(plan, step, values, inputs)
        except NotReusable:
            return None

    def _load(
        self,
        outputs: dict[str, dict[str, Any]],
        code: str,
        writes: tuple[str, ...] | list[str] = (),
        namespace: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """The values the cell binds: from the store, its own imports run again. None when one of ``writes`` is
        neither (a run keeps no modules or figures): the cell runs instead."""
        modules = [n for n, ref in outputs.items() if ref.get("type") == "module"]
        wanted = modules + [w for w in writes if w not in outputs]
        loaded = _imports(code, wanted) if wanted else {}
        if any(w not in outputs and w not in loaded for w in writes):
            return None
        try:
            for name, ref in outputs.items():
                if name not in loaded:
                    # arrays under 64 MiB are read into memory of their own, as running the cell gives (~0.3 ms
                    # per MB); larger ones are mapped copy-on-write, as %restore maps them (cannot .resize())
                    loaded[name] = self.store.objects.get(ref["hash"], name, mmap=True)
        except Exception:  # noqa: BLE001 - a value gone or unreadable: the cell runs instead
            return None
        if not _bind_aliases(outputs, loaded, namespace or {}):
            return None
        for name, value in loaded.items():
            if name not in wanted:
                self.hasher.remember(value, outputs[name]["hash"])
        return loaded

    def _earlier(self, execution_id: int, step: str) -> tuple[str, str]:
        """The run that computed an entry, and what its step printed."""
        from ..store.lineage import execution

        found = execution(self.store, execution_id)
        if found is None:
            return "?", ""
        run_id = found.run_id
        if found.reused_execution:  # a reuse of a reuse: name the run that computed it
            original = execution(self.store, found.reused_execution)
            if original is not None:
                run_id, step = original.run_id, original.step
        from ..store.shared_logs import step_log

        try:
            return run_id, step_log(self.store, run_id, step) or ""  # here, else from the shared store
        except OSError:
            return run_id, ""

    def _store_results(
        self,
        plan: PipelinePlan,
        step: StepPlan,
        key: str,
        values: dict[str, Any],
        inputs: dict[str, str],
        reported: dict[str, Any],
        outputs: dict[str, dict[str, Any]],
        not_kept: dict[str, str],
        printed: str,
        started: float,
        carried: dict[str, str | None] | None = None,
    ) -> str:
        """Index the cell's execution; cache its results when every value was kept and every metric is a number.

        ``reported``: the values the cell assigned, and the parameters it reports as metrics."""
        from .task import _metric

        metrics = {n: m for n in step.metrics if n in reported and (m := _metric(reported[n])) is not None}
        cacheable = bool(key) and not not_kept and set(step.metrics) <= set(metrics)
        execution = self._record(plan, step, key, values, inputs, outputs, metrics, started, printed=printed)
        if cacheable:
            self.store.cache_put(key, step.name, execution, outputs, metrics, {}, carried=carried)
            return "stored"
        return "ran"

    def _put(
        self, assigned: dict[str, Any], hidden: tuple[str, ...] = ()
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Store each value: (name -> stored reference, name -> why it could not be kept).

        A value that equals or holds one of ``hidden`` (the step's secrets) is never stored."""
        from ..store.objects import SecretValue

        outputs: dict[str, dict[str, Any]] = {}
        not_kept: dict[str, str] = {}
        for name, value in assigned.items():
            try:
                with warnings.catch_warnings():  # the format chosen is in the value's manifest; the cell stays quiet
                    warnings.simplefilter("ignore")
                    ref = self.store.objects.put(value, name, hidden)
            except SecretValue:
                not_kept[name] = SECRET
                continue
            except Exception as exc:  # noqa: BLE001 - reported by name, and the entry is not cached
                # the type and the error's kind only: the error's text can quote the value
                not_kept[name] = (
                    f"{type(value).__module__}.{type(value).__qualname__}: cannot be stored ({type(exc).__name__})"
                )
                continue
            outputs[name] = asdict(ref)
            self.hasher.remember(value, ref.hash)
        return outputs, not_kept

    # -- the session run -------------------------------------------------------------------------------
    def _later(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nbmagic-reuse")
            atexit.register(self.flush)
        self._pending.append(self._pool.submit(fn, *args, **kwargs))

    def on_next_cell(self, info: Any = None) -> None:
        self.flush()

    def flush(self) -> None:
        """Wait for the records still being written; a failure is reported in one line, never raised."""
        pending, self._pending = self._pending, []
        for future in pending:
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - the values are in the kernel; only the record is missing
                print(f"nbmagic: a reused cell could not be recorded in the run store: {exc}", file=sys.stderr)

    def _record(
        self,
        plan: PipelinePlan,
        step: StepPlan,
        key: str,
        values: dict[str, Any],
        inputs: dict[str, str],
        outputs: dict[str, dict[str, Any]],
        metrics: dict[str, float],
        started: float,
        reused: int | None = None,
        printed: str = "",
    ) -> int:
        """Index the cell's execution in this kernel's session run: computed here, or a reuse of an earlier one."""
        store = self.store
        if reused is not None:
            store.cache_touch(key)
        if self.session is None or step.name in self._recorded:
            # a session run holds each step once: running a cell again starts the next one, so an execution
            # that cache entries point at is never overwritten
            self.session = store.create_run(plan.name, {}, [], notebook=plan.notebook, kind="notebook")
            self._recorded, self._metrics = set(), {}
        self._recorded.add(step.name)
        run_id = self.session
        store.add_step(run_id, step.name)
        log = None
        if reused is None:
            path = store.run_dir(run_id) / f"{step.name}.log"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "w") as handle:
                handle.write(printed)
            os.chmod(path, 0o600)  # an older log of the same name keeps no wider mode
            log = str(path)
        properties: dict[str, Any] = {"parameters": values, "not_kept": {}}
        if reused is not None:
            properties["reused_execution"] = reused
        store.set_step(
            run_id,
            step.name,
            "cached" if reused is not None else "done",
            cached=int(reused is not None),
            cache_key=key,
            started=started,
            ended=time.time(),
            code_hash=code_hash(step.cell.code, step.prelude),
            log=log,
            properties=properties,
        )
        refs = {var: self._input_ref(var, digest) for var, digest in inputs.items()}
        execution = store.record_execution(run_id, step.name, refs, outputs, environment=environment(step.modules))
        self._metrics.update(metrics)
        store.finish_run(run_id, "done", self._metrics)
        return execution

    def _input_ref(self, name: str, digest: str) -> dict[str, Any]:
        try:
            manifest = self.store.objects.manifest(digest)
            return {"hash": digest, "type": manifest["type"], "format": manifest["format"], "size": manifest["size"]}
        except Exception:  # noqa: BLE001 - a hash of a value not (yet) stored: still a link by hash
            return {"hash": digest, "name": name}


def _imports(code: str, names: list[str]) -> dict[str, Any]:
    """Modules the cell binds with its own top-level import statements, imported again (what running it does);
    names bound any other way are left out, to be loaded from the store."""
    import ast

    try:
        tree = ast.parse(code)
    except SyntaxError:
        return {}
    found: dict[str, Any] = {}
    wanted = set(names)
    for node in tree.body:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        bound = {alias.asname or alias.name.split(".")[0] for alias in node.names}
        if not bound & wanted or "*" in bound:
            continue
        scope: dict[str, Any] = {}
        try:
            exec(compile(ast.Module([node], []), "<reused imports>", "exec"), scope)  # noqa: S102 - the cell's own import
        except Exception:  # noqa: BLE001 - the store has the value
            continue
        found.update({n: scope[n] for n in bound & wanted if n in scope})
    return found


SECRET = "holds a secret"


def secrets(plan: PipelinePlan, step: StepPlan | None = None) -> tuple[str, ...]:
    """The values of the ``--secret`` environment variables of ``step`` (of every step when None), as a local run
    injects them, and the contents of its ``--secret-file`` mounts found here: never stored, masked in logs."""

    from ..pipeline.settings import local_env
    from ..runtime.secret_files import secret_file_values

    steps = [step] if step is not None else list(plan.steps)
    found: dict[str, None] = {}
    for each in steps:
        settings = merged_settings(plan, each)
        env = local_env(settings, os.environ)
        found.update(dict.fromkeys(env[s.env] for s in settings.secret_env if env.get(s.env)))
        if settings.secret_files:  # what the step can read at a --secret-file mount on this machine
            found.update(dict.fromkeys(secret_file_values([f.path for f in settings.secret_files])))
    return tuple(found)


def mask(text: str, hidden: tuple[str, ...]) -> str:
    """``text`` with every secret of four characters or more replaced by ``***`` (as a run's log is)."""
    for secret in hidden:
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _edited_module(modules: tuple[str, ...]) -> str | None:
    """A local module the kernel imported (one the step imports, or one those import in turn) whose files changed
    since (the key would name code it does not run)."""
    from .cache_key import local_modules
    from .module_clock import loaded_at

    for module, files in local_modules(modules).items():
        if module not in sys.modules:
            continue  # imported from the file as it is now
        try:
            newest = max(os.stat(name).st_mtime for name in files)
        except OSError:
            return module
        if newest >= loaded_at(module):
            return module
    return None


def _deleted(code: str) -> tuple[set[str], set[str]]:
    """Names the cell deletes: with a ``del`` at its top level (always), and in a block (on some paths only).
    Deletions inside functions and classes are their own."""
    import ast

    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set(), set()

    def bare(target: ast.expr) -> set[str]:  # ``del a, (b, c)``; not ``del obj.attr`` or ``del d[key]``
        if isinstance(target, ast.Name):
            return {target.id}
        if isinstance(target, (ast.Tuple, ast.List)):
            return {name for item in target.elts for name in bare(item)}
        return set()

    def names(node: ast.Delete) -> set[str]:
        return {name for target in node.targets for name in bare(target)}

    always: set[str] = set()
    sometimes: set[str] = set()
    stack: list[ast.AST] = []
    for node in tree.body:
        if isinstance(node, ast.Delete):
            always |= names(node)
        else:
            stack.append(node)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Delete):
            sometimes |= names(node)
        stack.extend(ast.iter_child_nodes(node))
    return always, sometimes - always


_BY_REFERENCE = frozenset({"npy", "parquet", "pickle", "joblib"})  # formats naming the notebook's code, not copying it


def _by_value(loaded: dict[str, Any], outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The loaded values stored in a format that can copy a function's code and globals (dill): only those can hold
    a notebook function that does not see the kernel's globals."""
    return {
        n: v
        for n, v in loaded.items()
        if n in outputs and not outputs[n].get("alias") and outputs[n].get("format") not in _BY_REFERENCE
    }


def _bind_aliases(outputs: dict[str, dict[str, Any]], loaded: dict[str, Any], namespace: dict[str, Any]) -> bool:
    """Bind each name stored as a part of another value to that part of the loaded (or kernel's) value."""
    pending = {n: ref["alias"] for n, ref in outputs.items() if ref.get("alias")}
    for alias in pending.values():
        if not (isinstance(alias, list) and alias and isinstance(alias[0], str) and all(valid(k) for k in alias[1:])):
            return False
    for _ in range(len(pending) + 1):
        if not pending:
            return True
        for name, (whole, *path) in list(pending.items()):
            if whole in pending:
                continue  # bound once that one is
            source = loaded if whole in loaded else namespace
            if whole not in source:
                return False
            try:
                loaded[name] = follow(source[whole], path)
            except (KeyError, IndexError, TypeError, AttributeError):
                return False
            del pending[name]
    return not pending


def _changing(step: StepPlan, loaded: dict[str, Any], namespace: dict[str, Any]) -> list[str]:
    """The names a reuse would bind whose current objects running the cell may change in place: those its code
    reads or changes, its inputs, and the values it carries from ordinary cells (a notebook function can change
    them)."""
    info = analyze(step.cell.code)
    seen = {*info.reads, *info.mutated, *step.inputs, *(n for _, n in step.carried)}
    return [n for n in loaded if n in namespace and n in seen]


def _carried_names(step: StepPlan) -> list[str]:
    return [n for n in dict.fromkeys(name for _, name in step.carried) if n not in step.writes]


def _carried(step: StepPlan, namespace: dict[str, Any]) -> dict[str, str | None]:
    """Fingerprints of the kernel's values the step carries from ordinary cells (None: missing or unhashable)."""
    from ..runtime.step import fingerprint

    return {n: fingerprint(namespace[n]) if n in namespace else None for n in _carried_names(step)}


def _stale(stored: dict[str, str | None] | None, current: dict[str, str | None]) -> str | None:
    """The first carried value that differs from (or cannot be compared with) the entry's; None when all match."""
    for name, digest in current.items():
        if digest is None or stored is None or stored.get(name) != digest:
            return name
    return None


def _without_secrets(
    carried: dict[str, str | None], namespace: dict[str, Any], hidden: tuple[str, ...]
) -> dict[str, str | None]:
    """``carried`` with no fingerprint of a value that holds one of the step's secrets (None: not known)."""
    return {n: None if _holds_secret(namespace.get(n), hidden) else fp for n, fp in carried.items()}


def _holds_secret(value: Any, hidden: tuple[str, ...]) -> bool:
    from ..store.objects import _holds_secret as holds

    return holds(value, hidden)


def _kernel_key(key: str, carried: dict[str, str | None]) -> str:
    """The key of results computed with these carried values rather than those the notebook's cells give."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps({"key": key, "kernel_carried": carried}, sort_keys=True).encode()).hexdigest()


def _as_prelude_makes(step: StepPlan, carried: dict[str, str | None]) -> bool:
    """The kernel's carried values are those the step's notebook code (its prelude) gives, as a run computes them."""
    import contextlib

    from ..runtime.step import StepError, execute, fingerprint, ipython_setup, uses_ipython

    prelude = [tuple(part) for part in step.prelude_parts] or step.prelude
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            made = execute(
                step.name,
                "",
                step.cell.label,
                {},
                list(carried),
                prelude=prelude,
                setup=ipython_setup if uses_ipython(step.cell.code, step.prelude) else None,
            )
    except (StepError, Exception):  # noqa: BLE001 - cannot tell: not cached
        return False
    return all(digest is not None and n in made and fingerprint(made[n]) == digest for n, digest in carried.items())


def _with(step: StepPlan, settings: StepSettings) -> StepPlan:
    from dataclasses import replace

    return replace(step, settings=settings)


def _code(body: str) -> str:
    from ..pipeline.analysis import to_python

    return to_python(body).strip()


_SESSIONS: WeakKeyDictionary[Any, Reuse] = WeakKeyDictionary()


def _might_reuse(state: Any, line: str) -> bool:
    """Cheap check before building a plan: ``--reuse`` on the step or in a recorded ``%pipeline_config``."""
    if "--reuse" in line:
        return True
    return any(
        "--reuse" in cell.source and "%pipeline_config" in cell.source
        for cell in state.recorder.cells(state.notebook_path())
    )


def run_step_cell(
    state: Any, name: str, line: str, namespace: dict[str, Any], run_body: Callable[[], None], body: str | None = None
) -> str:
    """Run a ``%%step`` cell in the kernel, reusing or storing its results when reuse is on for it.

    ``state`` is the kernel's recorder state (``plan()``, ``recorder``); ``run_body`` runs the cell as usual.
    Returns ``"reused"``, ``"stored"`` or ``"ran"``.
    """
    plan = step = None
    if _might_reuse(state, line):
        try:
            plan = state.plan()
            step = plan.step(name)
        except NbMagicError as exc:
            if "--reuse" in line:  # asked for on this cell: say why it cannot be
                print(f"{name}: runs (cannot be reused: {exc})", flush=True)
            plan = None
    if plan is not None and reuse_wanted(plan, step) and body is not None and _code(body) != step.cell.code.strip():
        # one cell of a step spread over several: its results are the whole step's, so none is reused alone
        print(f"{name}: runs (cannot be reused: the step spans several cells)", flush=True)
        plan = None
    if plan is None or not reuse_wanted(plan, step):
        known = _SESSIONS.get(state)
        if known is not None:  # its results are no longer those of its last reuse-enabled key
            known.keys.pop(name, None)
        run_body()
        return "ran"
    from ..config import home

    reuse = _SESSIONS.get(state)
    if reuse is None or reuse.store.root != home() / "store":  # $NBMAGIC_HOME changed: a new store
        shell = getattr(state, "shell", None)
        if reuse is not None:
            reuse.flush()
            if shell is not None:
                shell.events.unregister("pre_run_cell", reuse.on_next_cell)
        reuse = _SESSIONS[state] = Reuse()
        if shell is not None:  # whatever runs next (%runs, %compile_run, …) sees every record
            shell.events.register("pre_run_cell", reuse.on_next_cell)
    return reuse.run_cell(plan, step, namespace, run_body, replan=state.plan)
