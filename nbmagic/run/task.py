"""One step as a worker child runs it: load inputs from the store, execute, keep every value it assigns."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..runtime.report import REPORT_FILE, Pruned, prune_path
from ..runtime.step import StepError, changed, execute, fingerprint, ipython_setup


def _redirect_output(log_path: str) -> None:
    """Send the step's stdout/stderr (Python and C level) to its log file."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)


def _metric(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def run_task(spec_path: str, secrets: tuple[str, ...] = ()) -> int:
    """Run the step described by the JSON spec at ``spec_path``; write its result next to it. Exit code 0/1.

    ``secrets`` (the values injected for ``--secret``), and the contents of the spec's ``secret_files`` found on
    this machine, are never stored, and are masked in the log and result.
    """
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("secret_files"):  # what the step can read at its --secret-file mounts here is as secret
        from ..runtime.secret_files import secret_file_values

        secrets = tuple(dict.fromkeys((*secrets, *secret_file_values(spec["secret_files"]))))
    _redirect_output(spec["log"])
    os.environ.update(spec.get("env", {}))
    from ..store.objects import ObjectStore, _holds_secret

    store = ObjectStore(Path(spec["store"]))
    result: dict[str, Any] = {"status": "failed", "outputs": {}, "not_kept": {}, "metrics": {}, "started": time.time()}
    try:
        if spec.get("cwd"):
            os.chdir(spec["cwd"])  # a forked child of its own: the worker's folder is untouched
        values = dict(spec["parameters"])
        for var, digest in spec["inputs"].items():
            values[var] = store.get(digest, name=var)
        writes = list(spec["writes"])
        # every loaded value is fingerprinted before and after: a change the code does not show is still seen
        before = {var: fingerprint(values[var]) for var in spec["inputs"]} if spec.get("watch", True) else {}
        carried = [n for n in spec.get("carried", []) if n not in writes and n not in before]
        extra = [n for n in list(before) + carried + list(spec["metrics"]) if n not in writes]

        def carried_fingerprints(namespace: dict[str, Any]) -> None:
            """Values carried from ordinary cells (``history = []``), as the prelude made them."""
            for name in carried:
                if name in namespace:
                    before[name] = fingerprint(namespace[name])
            # a value holding a secret has no fingerprint kept (the cache entry may be shared): None, not known
            hidden = {n for n in carried if secrets and n in namespace and _holds_secret(namespace[n], secrets)}
            result["carried"] = {name: None if name in hidden else before.get(name) for name in carried}

        assigned = execute(
            spec["step"],
            spec["code"],
            spec["label"],
            values,
            writes + extra,
            prelude=spec.get("prelude", ""),
            prelude_label=spec.get("prelude_label", "<notebook code>"),
            setup=ipython_setup if spec.get("uses_ipython") else None,
            first_line=spec.get("first_line", 1),
            after_prelude=carried_fingerprints if carried and spec.get("watch", True) else None,
        )
        required = set(spec["required"])
        for name in spec["metrics"]:
            if name not in assigned:
                raise RuntimeError(f"step {spec['step']!r} did not assign metric {name!r}")
            number = _metric(assigned[name])
            if number is None:
                raise TypeError(
                    f"metric {name!r} from step {spec['step']!r} is a {type(assigned[name]).__name__}, not a number"
                )
            result["metrics"][name] = number
        moved = set(changed(before, assigned))
        result["changed"] = sorted(v for v in moved if v not in writes)
        # values without a fingerprint (pickle cannot read them) are taken as changed: passed on, to be safe
        result["unsure"] = sorted(v for v in result["changed"] if before.get(v) is None)
        input_refs = spec.get("input_refs", {})
        for name, value in assigned.items():
            if name in before and name not in moved:
                if name in writes and name in input_refs:
                    result["outputs"][name] = input_refs[name]  # changed nothing after all: the same stored value
                    continue
                if name not in writes:
                    continue
            if name not in writes and name not in moved:
                continue  # a parameter reported as a metric
            if name not in required and _not_state(value):
                continue  # modules, figures: nothing a later step or %restore can use
            try:
                result["outputs"][name] = asdict(store.put(value, name, secrets))
            except Exception as exc:  # noqa: BLE001 - unserializable values are reported by name
                if getattr(exc, "disk_full", False):  # never a silent gap: the step fails, no cache entry
                    raise _OutputError(f"step {spec['step']!r}: {exc}") from None
                if type(exc).__name__ == "SecretValue":
                    if name in required:
                        raise _OutputError(
                            f"step {spec['step']!r}: variable {name!r} holds a secret and is not passed to the steps"
                            " that read it (read the secret in the step that uses it)"
                        ) from None
                    result["not_kept"][name] = "holds a secret"
                    continue
                # the type and the error's kind only: the error's text can quote the value (and what it holds)
                reason = f"{type(value).__module__}.{type(value).__qualname__}: cannot be stored ({type(exc).__name__})"
                if name in required:
                    raise _OutputError(
                        f"step {spec['step']!r}: variable {name!r} of type {type(value).__qualname__} cannot be stored for the steps that read it ({exc})"
                    ) from None
                result["not_kept"][name] = reason
        lost = [v for v in result["changed"] if v not in result["outputs"] and v not in result["unsure"]]
        if lost:
            raise _OutputError(
                f"step {spec['step']!r} changes {lost[0]!r} in place, and the changed value cannot be stored for "
                f"later steps ({result['not_kept'].get(lost[0], 'not kept')})"
            )
        result["changed"] = [v for v in result["changed"] if v in result["outputs"]]
        result["unsure"] = [v for v in result["unsure"] if v in result["outputs"]]
        _note_links(result, assigned, values, [*spec["inputs"], *carried], spec.get("modules", ()))
        missing = sorted(required - set(assigned))
        if missing:
            raise _OutputError(f"step {spec['step']!r} did not assign {missing[0]!r}, which a later step reads")
        result["status"] = "done"
    except StepError as exc:
        report_file = os.environ.get(REPORT_FILE, "")
        if exc.exc_type == Pruned.__name__ and report_file and os.path.exists(prune_path(report_file)):
            result["status"] = "pruned"  # stopped early by the tuning experiment: not a failure, not cached
            result["error"] = f"step {spec['step']!r} stopped early: {str(exc).split(': ', 2)[-1]}"
        else:
            result["error"] = str(exc)
        result["traceback"] = exc.notebook_traceback
        sys.stderr.write(exc.notebook_traceback)
    except Exception as exc:  # noqa: BLE001 - store and output errors
        result["error"] = (
            str(exc) if isinstance(exc, _OutputError) else f"step {spec['step']!r}: {type(exc).__name__}: {exc}"
        )
        sys.stderr.write(result["error"] + "\n")
    result["ended"] = time.time()
    if secrets:
        _mask(result, spec["log"], secrets)
    _write_json(spec["result"], result)
    return 0 if result["status"] == "done" else 1


def _mask(result: dict[str, Any], log_path: str, secrets: tuple[str, ...]) -> None:
    """Replace every secret in the result's error text and in the step's log with ``***``."""
    sys.stdout.flush()
    sys.stderr.flush()
    mask_result(result, secrets)
    mask_file(log_path, secrets)


def mask_text(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret of four characters or more replaced by ``***`` (shorter ones would mask
    ordinary text, and are not secrets worth the name)."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def mask_result(result: dict[str, Any], secrets: tuple[str, ...]) -> None:
    """The result's error texts and the reasons values were not kept, with every secret masked."""
    for key in ("error", "traceback"):
        if isinstance(result.get(key), str):
            result[key] = mask_text(result[key], secrets)
    not_kept = result.get("not_kept")
    if isinstance(not_kept, dict):
        result["not_kept"] = {n: mask_text(str(why), secrets) for n, why in not_kept.items()}


def mask_file(log_path: str, secrets: tuple[str, ...]) -> None:
    """Rewrite the file at ``log_path`` (owner-only) with every secret masked; nothing when it holds none."""
    try:
        data = Path(log_path).read_bytes()
    except OSError:
        return
    masked = data
    for secret in secrets:
        if len(secret) >= 4:
            masked = masked.replace(secret.encode(), b"***")
    if masked != data:
        tmp = f"{log_path}.{os.getpid()}.tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            handle.write(masked)
        os.replace(tmp, log_path)


def _not_state(value: Any) -> bool:
    """Values not worth keeping: modules, and matplotlib figures/axes (they only draw)."""
    import types

    return isinstance(value, types.ModuleType) or type(value).__module__.split(".")[0] == "matplotlib"


class _OutputError(Exception):
    pass


def _note_links(
    result: dict[str, Any], assigned: dict[str, Any], values: dict[str, Any], read: list[str], modules: Any = ()
) -> None:
    """What a kernel reusing these results must know: a name stored as a part of another value is marked so (it
    loads as that part), and values holding one object otherwise make the results not reusable in a kernel (said in
    ``result["kernel_reuse"]`` and on a stored value's reference; ``not_kept`` keeps meaning "not stored")."""
    from .reuse_links import links
    from .reuse_parts import mark_mode

    outputs = result["outputs"]
    for name, ref in list(outputs.items()):
        if (
            "alias" in ref or "kernel_reuse" in ref or "cow" in ref
        ):  # passed on from the step that stored it: said afresh here
            outputs[name] = {k: v for k, v in ref.items() if k not in ("alias", "kernel_reuse", "cow")}
    kept = {n: assigned[n] for n in outputs if n in assigned}
    seen = {n: assigned.get(n, values.get(n)) for n in read if n not in kept and (n in assigned or n in values)}
    try:
        reason, aliases = links(kept, seen, modules)
    except Exception as exc:  # noqa: BLE001 - not sure: a kernel runs the step instead of reusing it
        reason, aliases = f"its values cannot be checked for shared objects ({type(exc).__name__})", {}
    for name, path in aliases.items():
        outputs[name] = {**outputs[name], "alias": path}
    mark_mode(outputs)
    if reason and kept:
        # the values are stored (a run's later steps and %restore load them); a kernel must not reuse them as one
        # set: the reason goes with the first value's reference, which the cache entry (local and shared) carries
        first = next(iter(sorted(set(kept) - set(aliases))), next(iter(kept)))
        result["kernel_reuse"] = reason
        outputs[first] = {**outputs[first], "kernel_reuse": reason}
