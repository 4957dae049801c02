"""nbmagic's runtime package (``nbmagic/runtime/``) as one zip, base64-encoded, for pipelines whose image lacks it.

The zip holds ``nbmagic/runtime/**.py`` under a stub ``nbmagic/__init__.py``; a component writes it to a temp file
and puts that file on ``sys.path`` (Python imports straight from zips), then imports
``nbmagic.runtime.component``. The archive is deterministic (fixed order, dates and modes), so the same runtime
always compiles to the same text, and it is built once per process while the files are unchanged.
"""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path

from ..errors import NbMagicError

RUNTIME_DIR = Path(__file__).resolve().parent.parent / "runtime"
STUB = (
    '"""nbmagic\'s step runtime only, as a compiled pipeline carries it."""\n'
    "from .runtime.report import Pruned, report  # noqa: F401 - ``from nbmagic import report`` in a step\n"
)
_EPOCH = (1980, 1, 1, 0, 0, 0)
_cache: dict[tuple, str] = {}


def _sources() -> list[Path]:
    return sorted(p for p in RUNTIME_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def _entry(zf: zipfile.ZipFile, name: str, text: str) -> None:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, text, compresslevel=9)


def runtime_zip() -> bytes:
    """The runtime package as zip bytes (stub ``nbmagic/__init__.py`` plus ``nbmagic/runtime/``)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        _entry(zf, "nbmagic/__init__.py", STUB)
        for path in _sources():
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise NbMagicError(f"cannot read nbmagic's runtime file {path}: {exc.strerror}") from None
            _entry(zf, "nbmagic/runtime/" + path.relative_to(RUNTIME_DIR).as_posix(), text)
    return buffer.getvalue()


def runtime_base64() -> str:
    """:func:`runtime_zip` as base64 text, cached while no runtime file changes."""
    key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in _sources())
    if key not in _cache:
        _cache.clear()
        _cache[key] = base64.b64encode(runtime_zip()).decode("ascii")
    return _cache[key]
