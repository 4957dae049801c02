"""``nbmagic runs`` and ``nbmagic gc``: run history and garbage collection from the command line.

The argument specs and the two command bodies are shared with the ``%runs`` and ``%gc`` magics.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import NbMagicError

RUNS_ARGUMENTS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (
        ("--where", "-w"),
        dict(
            action="append",
            metavar="COND",
            help='filter, e.g. "val_loss<0.3", "lr>=0.01, status=done", "pipeline~demo", "age<2h"',
        ),
    ),
    (
        ("--sort", "-s"),
        dict(
            metavar="FIELD",
            help="sort by a metric, parameter or column; '-' in front for descending (default -started)",
        ),
    ),
    (("--limit", "-n"), dict(type=int, default=None, help="show at most N runs (default 50; 0 for all)")),
    (("--pipeline",), dict(help="only runs of this pipeline")),
    (("--experiment",), dict(help="only trials of this tuning experiment")),
    (
        ("--compare",),
        dict(nargs=2, metavar=("A", "B"), help="parameter, metric and step code differences between two runs"),
    ),
]

GC_ARGUMENTS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--keep-last",), dict(type=int, metavar="N", help="keep the N most recent runs")),
    (("--older-than",), dict(metavar="AGE", help="drop runs older than AGE (e.g. 30d, 12h)")),
    (("--max-size",), dict(metavar="SIZE", help="drop oldest runs until the store's values fit in SIZE (e.g. 5GB)")),
    (
        ("--keep",),
        dict(action="append", metavar="RUN", help="never drop this run (repeatable; id, prefix, last or best)"),
    ),
    (("--no-keep-best",), dict(action="store_true", help="do not protect each experiment's best trial")),
    (("--dry-run",), dict(action="store_true", help="list what would go and the bytes freed; remove nothing")),
    (
        ("--verify",),
        dict(action="store_true", help="check every stored value against its hash; remove corrupt ones (fsck)"),
    ),
    (
        ("--set-policy",),
        dict(action="store_true", help="save the given limits as the automatic policy applied after runs"),
    ),
    (("--show-policy",), dict(action="store_true", help="print the automatic policy")),
    (("--clear-policy",), dict(action="store_true", help="remove the automatic policy")),
]

DEFAULT_LIMIT = 50


def sort_value_fix(argv: list[str]) -> list[str]:
    """``--sort -val_loss`` -> ``--sort=-val_loss`` (argparse would read ``-val_loss`` as an option)."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] in ("--sort", "-s") and token.startswith("-") and len(token) > 1:
            out[-1] = f"--sort={token}"
            continue
        out.append(token)
    return out


def sort_line_fix(line: str) -> str:
    """The same for a magic's argument line."""
    import re

    return re.sub(r"(?:^|(?<=\s))(?:--sort|-s)\s+(-[\w.,+-]+)", r"--sort=\1", line)


def runs_command(store: Any, args: argparse.Namespace) -> Any:
    """A RunTable, or a Comparison with ``--compare``."""
    from .restore import resolve_run
    from .store.history import RunTable, compare, query

    if args.compare:
        return compare(store, args.compare[0], args.compare[1], resolve=lambda ref: resolve_run(store, ref))
    limit = DEFAULT_LIMIT if args.limit is None else args.limit
    if limit < 0:
        raise NbMagicError(f"--limit must be 0 (all) or more, not {limit}")
    runs, total = query(store, args.where, args.sort, limit, pipeline=args.pipeline, experiment=args.experiment)
    return RunTable(runs, total)


def gc_command(store: Any, args: argparse.Namespace) -> Any:
    """A GcReport, or a line about the automatic policy."""
    from .restore import resolve_run
    from .store.gc import Policy, collect, load_policy, save_policy, verify

    given = {"keep_last": args.keep_last, "older_than": args.older_than, "max_size": args.max_size}
    if args.show_policy:
        policy = load_policy(store)
        return f"automatic gc policy: {policy.describe() if policy else 'none'}"
    if args.clear_policy:
        save_policy(store, None)
        return "automatic gc policy removed"
    policy = Policy.from_mapping({**given, "keep_best": not args.no_keep_best}, "gc")
    if args.set_policy:
        if policy.empty():
            raise NbMagicError("--set-policy needs --keep-last, --older-than or --max-size")
        save_policy(store, policy)
        return f"automatic gc policy: {policy.describe()} (applied after each run; in {store.root / 'gc.json'})"
    if getattr(args, "verify", False):
        checked = verify(store)
        if policy.empty():
            return checked
        report = collect(store, policy, dry_run=args.dry_run, keep=[resolve_run(store, r) for r in args.keep or []])
        report.notes.append(checked.text().splitlines()[0])
        return report
    if policy.empty():
        configured = load_policy(store)
        if configured is None or configured.empty():
            raise NbMagicError(
                "gc: give --keep-last N, --older-than AGE or --max-size SIZE (or set an automatic policy)"
            )
        policy = configured
    keep = [resolve_run(store, ref) for ref in (args.keep or [])]
    return collect(store, policy, dry_run=args.dry_run, keep=keep)


def _store(args: argparse.Namespace) -> Any:
    from .store.runs import RunStore

    return RunStore(args.store) if args.store else RunStore()


def cmd_runs(args: argparse.Namespace) -> int:
    result = runs_command(_store(args), args)
    if args.json and hasattr(result, "to_records"):
        from .store.history import dumps

        print(dumps(result))
    else:
        print(result.text() if hasattr(result, "text") else result)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    result = gc_command(_store(args), args)
    print(result.text() if hasattr(result, "text") else result)
    return 0


class _RunsParser(argparse.ArgumentParser):
    """Applies :func:`sort_value_fix` before parsing ``nbmagic runs`` arguments."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        return super().parse_known_args(sort_value_fix(list(sys.argv[1:] if args is None else args)), namespace)


def register(subparsers: Any) -> None:
    """Add ``runs`` and ``gc`` to the ``nbmagic`` command."""
    runs = subparsers.add_parser("runs", help="list, filter, sort and compare runs in the store")
    for names, options in RUNS_ARGUMENTS:
        runs.add_argument(*names, **options)
    runs.add_argument("--json", action="store_true", help="print the runs as JSON")
    runs.add_argument("--store", help="the store folder (default: $NBMAGIC_HOME/store)")
    runs.set_defaults(func=cmd_runs)
    runs.__class__ = _RunsParser

    gc = subparsers.add_parser("gc", help="drop old runs and free values nothing kept refers to")
    for names, options in GC_ARGUMENTS:
        gc.add_argument(*names, **options)
    gc.add_argument("--store", help="the store folder (default: $NBMAGIC_HOME/store)")
    gc.set_defaults(func=cmd_gc)


if __name__ == "__main__":  # pragma: no cover
    from .cli import main

    sys.exit(main())
