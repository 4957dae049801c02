"""The step runtime: run one step's cell code on its inputs and hand back what it assigned.

Used by the local runner's worker processes and, embedded as source, by compiled KFP components,
so it imports only the standard library.
"""

from __future__ import annotations

import linecache
import sys
import traceback
from typing import Any, Callable


class StepError(Exception):
    """The cell raised; ``notebook_traceback`` points at notebook cells, not at generated code."""

    def __init__(self, step: str, exc: BaseException, notebook_traceback: str):
        super().__init__(f"step {step!r} failed: {type(exc).__name__}: {exc}")
        self.step = step
        self.exc_type = type(exc).__name__
        self.notebook_traceback = notebook_traceback


def _register(label: str, code: str) -> None:
    """Make ``code`` visible to tracebacks under the file name ``label``."""
    linecache.cache[label] = (len(code), None, code.splitlines(keepends=True), label)


def _notebook_traceback(exc: BaseException, labels: set[str]) -> str:
    """Format ``exc`` keeping only frames from notebook code (the cell and its prelude)."""
    frames = traceback.extract_tb(exc.__traceback__)
    kept = [f for f in frames if f.filename in labels or not f.filename.startswith("<") and "nbmagic" not in f.filename]
    # drop leading runtime frames; keep library frames that the notebook code called into
    while kept and kept[0].filename not in labels:
        kept.pop(0)
    lines = ["Traceback (most recent call last):\n"] + traceback.format_list(kept)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def ipython_setup(namespace: dict[str, Any]) -> None:
    """Give ``%time`` / ``!cmd`` lines in a step (IPython-transformed to ``get_ipython()`` calls) a shell whose
    namespace is the step's own. Needs IPython where the step runs."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance(user_ns=namespace)
    namespace["get_ipython"] = lambda: shell


def uses_ipython(*sources: str) -> bool:
    return any("get_ipython" in (source or "") for source in sources)


def execute(
    step: str,
    code: str,
    label: str,
    values: dict[str, Any],
    writes: list[str] | tuple[str, ...],
    prelude: str | list[tuple[str, int, str]] | tuple = "",
    prelude_label: str = "<notebook code>",
    setup: Callable[[dict[str, Any]], None] | None = None,
    first_line: int = 1,
    after_prelude: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run ``prelude`` then ``code`` in a fresh namespace seeded with ``values``.

    ``prelude`` is notebook code the cell needs: one text (labelled ``prelude_label``), or
    ``(cell label, first line, source)`` pieces whose tracebacks point at their own cells and lines.

    ``first_line`` is the cell line ``code`` starts on (2 under a ``%%step`` line).
    ``setup`` may prepare the namespace first (e.g. an IPython shell for magics in the cell);
    ``after_prelude`` sees the namespace once the prelude has run (to fingerprint carried values).
    Returns the names in ``writes`` that the code left bound. Raises StepError if the code raises.
    """
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    pieces = [(prelude_label, 1, prelude)] if isinstance(prelude, str) else [tuple(p) for p in prelude]
    labels = {label} | {piece[0] for piece in pieces}
    if setup is not None:
        setup(namespace)
    try:
        for piece_label, piece_line, source in pieces:
            if not source:
                continue
            padded = "\n" * (piece_line - 1) + source  # keep the cell's own line numbers
            _register(piece_label, padded)
            exec(compile(padded, piece_label, "exec", dont_inherit=True), namespace)
        namespace.update(values)
        if after_prelude is not None:
            after_prelude(namespace)
        padded = "\n" * (first_line - 1) + code  # line numbers as the notebook shows them
        _register(label, padded)
        exec(compile(padded, label, "exec", dont_inherit=True), namespace)
    except BaseException as exc:  # noqa: BLE001 - the cell's own error, reported with its traceback
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) and not isinstance(exc, SystemExit):
            raise
        raise StepError(step, exc, _notebook_traceback(exc, labels)) from None
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return {name: namespace[name] for name in writes if name in namespace}


def _hasher():
    try:
        import xxhash

        return xxhash.xxh3_128()
    except ImportError:
        import hashlib

        return hashlib.blake2b(digest_size=16)


def _cow_mapping(value: Any) -> str | None:
    """For an array that lives in a private (copy-on-write) file mapping, as large stored arrays load: "cow:<start>"
    while no page of that mapping was written, a content hash once one was, None when not such an array.

    Linux counts written copy-on-write pages per mapping (``/proc/self/smaps``), so an unchanged input costs a
    lookup instead of a pass over its memory."""
    try:
        address = value.__array_interface__["data"][0]
        handle = open("/proc/self/smaps")
    except (AttributeError, OSError, TypeError, KeyError):
        return None
    with handle:
        inside = False
        start = ""
        for line in handle:
            head = line.split(None, 5)
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                low, _, high = head[0].partition("-")
                try:
                    inside = int(low, 16) <= address < int(high, 16)
                except ValueError:
                    inside = False
                if inside:
                    perms, inode = head[1], head[4]
                    if not (perms[1] == "w" and perms[3] == "p" and inode != "0"):
                        return None  # not a private file mapping
                    start = low
                continue
            if inside and head[0] == "Anonymous:" and int(head[1]) > 0:
                return ""  # written: hash the content
            if inside and head[0] == "VmFlags:":
                return f"cow:{start}"
    return None


def fingerprint(value: Any) -> str | None:
    """A content hash of ``value`` as it is now, to tell whether a step changed it in place; None if unknown.

    Arrays are hashed over their memory (xxh3), unless they sit untouched in a copy-on-write file mapping;
    pandas numeric columns likewise, other columns per row; anything else through pickle, with large buffers
    hashed out of band instead of copied."""
    import pickle

    digest = _hasher()
    np = sys.modules.get("numpy")
    try:
        if np is not None and isinstance(value, np.ndarray) and value.dtype != object:
            if value.nbytes >= 1 << 24:
                mapped = _cow_mapping(value)
                if mapped:
                    return mapped
            digest.update(f"{value.dtype.str}{value.shape}".encode())
            digest.update(memoryview(np.ascontiguousarray(value)).cast("B"))
            return digest.hexdigest()
        pd = sys.modules.get("pandas")
        if pd is not None and isinstance(value, (pd.DataFrame, pd.Series)):
            try:
                frame = value if isinstance(value, pd.DataFrame) else value.to_frame()
                digest.update(repr((list(frame.columns), [str(t) for t in frame.dtypes], frame.shape)).encode())
                index = frame.index
                if isinstance(index, pd.RangeIndex):
                    digest.update(repr(index).encode())
                else:
                    digest.update(memoryview(pd.util.hash_pandas_object(index).to_numpy()).cast("B"))
                kinds = {t.kind for t in frame.dtypes}
                whole = frame.to_numpy() if len(set(frame.dtypes)) == 1 and kinds <= set("biufc") else None
                if whole is not None and (whole.flags.c_contiguous or whole.flags.f_contiguous):
                    # one numeric block: hash its memory as it lies (the transpose of a column-major block)
                    digest.update(memoryview(whole if whole.flags.c_contiguous else whole.T).cast("B"))
                    digest.update(repr(getattr(value, "attrs", {})).encode())
                    return digest.hexdigest()
                for position in range(frame.shape[1]):
                    column = frame.iloc[:, position]
                    if column.dtype.kind in "biufcmM":
                        digest.update(memoryview(np.ascontiguousarray(column.to_numpy())).cast("B"))
                    else:
                        digest.update(memoryview(pd.util.hash_pandas_object(column, index=False).to_numpy()).cast("B"))
                digest.update(repr(getattr(value, "attrs", {})).encode())
                return digest.hexdigest()
            except TypeError:
                pass  # unhashable cells (lists in a column): pickle below

        def out_of_band(buffer: pickle.PickleBuffer) -> bool:
            digest.update(buffer.raw())
            return False

        digest.update(pickle.dumps(value, protocol=5, buffer_callback=out_of_band))
        return digest.hexdigest()
    except Exception:  # noqa: BLE001 - a value pickle cannot read: its changes cannot be seen
        return None


def changed(before: dict[str, str | None], values: dict[str, Any]) -> list[str]:
    """Names whose value no longer matches its fingerprint in ``before`` (unknown fingerprints count as changed)."""
    return [
        name for name, old in before.items() if name in values and (old is None or fingerprint(values[name]) != old)
    ]
