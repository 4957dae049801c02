"""What a compiled step keeps out of the shared store: values holding one of its secrets.

The step's ``--secret`` environment variable names and ``--secret-file`` paths are compiled into its store
target (names and paths only, never values); in the pod the values are read from its environment and files,
and a value holding one (in memory or in its stored files) is not published, as the local runner does ("holds a secret").
An output held back is marked in its artifact folder, so a later step does not publish it as its input.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .secret_files import secret_file_values
from .secret_search import files_hold_secret, holds_secret

HELD = "holds a secret"
MARK = ".nbmagic-holds-secret"  # in an artifact folder whose value was held back (not in its manifest)


def secret_values(target: dict) -> tuple[str, ...]:
    """The values of the step's secret environment variables and the text of its secret files."""
    found = [os.environ.get(name, "") for name in target.get("secret_env") or ()]
    found += secret_file_values(tuple(target.get("secret_files") or ()))
    return tuple(dict.fromkeys(v for v in found if v))


def _holds(folder: Path, secrets: tuple[str, ...], memory: dict, name: str) -> bool:
    """True when the value (in memory, when the step has it) or a file of its marshal folder holds a secret:
    a compressed or escaped file can hide what the value shows, and the other way round."""
    if (folder / MARK).exists():
        return True
    if name in memory and holds_secret(memory[name], secrets):
        return True
    return files_hold_secret(folder, secrets)


def hold_back(
    step: str,
    target: dict,
    outputs: dict,
    inputs: dict,
    out_values: dict | None = None,
    in_values: dict | None = None,
) -> tuple[dict, dict, dict]:
    """``outputs`` and ``inputs`` (name -> marshal folder) without the values holding a secret, and the
    ``not_kept`` reasons of the outputs held back; one line on stderr for each. ``out_values`` and ``in_values``
    (name -> value) are the values in memory, searched as well as their files. A held output's folder is
    marked for the steps that read it."""
    secrets = secret_values(target)
    not_kept: dict[str, str] = {}
    kept_out, kept_in = {}, {}
    for name, folder in outputs.items():
        if _holds(Path(folder), secrets, out_values or {}, name):
            not_kept[name] = HELD
            sys.stderr.write(f"nbmagic: step {step!r}: variable {name!r} {HELD}: not recorded in {target['uri']}\n")
            try:
                (Path(folder) / MARK).write_bytes(b"")
            except OSError:
                pass
            continue
        kept_out[name] = folder
    for name, folder in inputs.items():
        if _holds(Path(folder), secrets, in_values or {}, name):
            sys.stderr.write(f"nbmagic: step {step!r}: input {name!r} {HELD}: not recorded in {target['uri']}\n")
            continue
        kept_in[name] = folder
    return kept_out, kept_in, not_kept
