"""The run store: typed marshalling, content-addressed values, runs, cache and lineage.

:class:`Store` (``nbmagic.store.runs.RunStore``) is the store's one door: it is the only code that speaks SQL;
gc, lineage, history, restore and the front ends call its methods (``runs()``, ``resolve_run()``,
``best_trial()``, ``latest_output()``, …).
"""

from .runs import RunStore as Store

__all__ = ["Store"]
