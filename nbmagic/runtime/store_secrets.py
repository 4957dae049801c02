"""What a compiled step keeps out of the shared store: values holding one of its secrets.

The step's ``--secret`` environment variable names and ``--secret-file`` paths are compiled into its store
target (names and paths only, never values); in the pod the values are read from its environment and files,
and a stored value whose bytes contain one is not published, as the local runner does ("holds a secret").
An output held back is marked in its artifact folder, so a later step does not publish it as its input.
"""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

from .secret_files import secret_file_values

HELD = "holds a secret"
ENCODINGS = ("utf-8", "utf-32-le", "utf-32-be", "utf-16-le", "utf-16-be")
MARK = ".nbmagic-holds-secret"  # in an artifact folder whose value was held back (not in its manifest)


def secret_values(target: dict) -> tuple[str, ...]:
    """The values of the step's secret environment variables and the text of its secret files."""
    found = [os.environ.get(name, "") for name in target.get("secret_env") or ()]
    found += secret_file_values(tuple(target.get("secret_files") or ()))
    return tuple(dict.fromkeys(v for v in found if v))


def _holds(folder: Path, needles: list[bytes]) -> bool:
    """True when a file of the marshal folder contains one of ``needles`` (pickles keep strings as bytes)."""
    if (folder / MARK).exists():
        return True
    for path in folder.iterdir():
        if not needles or not path.is_file() or path.stat().st_size == 0:
            continue
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if any(data.find(needle) >= 0 for needle in needles):
                return True
    return False


def hold_back(step: str, target: dict, outputs: dict, inputs: dict) -> tuple[dict, dict, dict]:
    """``outputs`` and ``inputs`` (name -> marshal folder) without the values holding a secret, and the
    ``not_kept`` reasons of the outputs held back; one line on stderr for each. A held output's folder is
    marked for the steps that read it."""
    secrets = secret_values(target)
    # as the local store: shorter ones match too much; numpy keeps strings as UTF-32, some formats as UTF-16
    needles = [s.encode(e) for s in secrets if len(s) >= 4 for e in ENCODINGS]
    not_kept: dict[str, str] = {}
    kept_out, kept_in = {}, {}
    for name, folder in outputs.items():
        if _holds(Path(folder), needles):
            not_kept[name] = HELD
            sys.stderr.write(f"nbmagic: step {step!r}: variable {name!r} {HELD}: not recorded in {target['uri']}\n")
            try:
                (Path(folder) / MARK).write_bytes(b"")
            except OSError:
                pass
            continue
        kept_out[name] = folder
    for name, folder in inputs.items():
        if _holds(Path(folder), needles):
            sys.stderr.write(f"nbmagic: step {step!r}: input {name!r} {HELD}: not recorded in {target['uri']}\n")
            continue
        kept_in[name] = folder
    return kept_out, kept_in, not_kept
