"""Cost of in-place detection: fingerprinting a step's inputs before and after it runs, against storing them.

A step that loads a value pays one fingerprint before the cell and one after (``nbmagic.runtime.step.fingerprint``:
xxh3 over an array's memory, per-row hashes for pandas). The baseline is what the same step pays to keep a value:
``ObjectStore.put`` of it. Also measured: a whole step through the worker's ``run_task`` with the check on and off
(``"watch": false`` in the spec), loading a 500 MB input from the store and summing it.

    python bench/bench_in_place.py [--mb 500] [--repeat 3] [--markdown bench/RESULTS-in-place.md]

Large arrays loaded from the store sit in a copy-on-write mapping: while the step writes none of its pages, the
fingerprint is a lookup in ``/proc/self/smaps`` instead of a pass over the memory (the "step" rows show that path).

Target (issue 10): the two fingerprints under 10% of the value's store time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def step_time(store_root: Path, digest: str, watch: bool, repeat: int) -> float:
    """A worker-style step in a fresh process: load the input from the store, sum it, keep the sum."""
    times = []
    for _ in range(repeat):
        folder = Path(tempfile.mkdtemp(dir=store_root))
        spec = {
            "step": "use",
            "code": "total = float(x.sum())\n",
            "label": "bench cell",
            "parameters": {},
            "inputs": {"x": digest},
            "writes": ["total"],
            "required": ["total"],
            "metrics": [],
            "store": str(store_root / "objects"),
            "log": str(folder / "use.log"),
            "result": str(folder / "use.result.json"),
            "watch": watch,
        }
        path = folder / "spec.json"
        path.write_text(json.dumps(spec))
        code = (
            "import sys, time; from nbmagic.run.task import run_task; t = time.perf_counter(); "
            f"rc = run_task({str(path)!r}); open({str(folder / 'took')!r}, 'w').write(str(time.perf_counter() - t))"
        )
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        result = json.loads((folder / "use.result.json").read_text())
        assert result["status"] == "done", result
        times.append(float((folder / "took").read_text()))
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd

    from nbmagic.runtime.step import fingerprint
    from nbmagic.store.objects import ObjectStore

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = ObjectStore(root / "objects")
        array = np.random.default_rng(0).random(args.mb * (1 << 20) // 8)
        frame = pd.DataFrame(array[: len(array) // 4].reshape(-1, 4), columns=list("abcd"))
        for label, value in ((f"ndarray {args.mb} MB", array), (f"DataFrame {args.mb // 2} MB", frame)):
            n = [0]

            def put(value=value):
                n[0] += 1
                if isinstance(value, np.ndarray):
                    value[0] = n[0]  # new content each time: a put of known content only hashes
                else:
                    value.iloc[0, 0] = n[0]
                store.put(value, f"v{n[0]}")

            stored = best(put, args.repeat)
            hashed = best(lambda value=value: (fingerprint(value), fingerprint(value)), args.repeat)
            rows.append((label, stored, hashed))
        digest = store.put(array, "x").hash
        off, on = float("inf"), float("inf")
        for _ in range(args.repeat + 2):  # interleaved, so a busy moment hits both sides
            off = min(off, step_time(root, digest, False, 1))
            on = min(on, step_time(root, digest, True, 1))

    lines = [
        "| value | store (put) | 2 fingerprints | fingerprints / store |",
        "|---|---:|---:|---:|",
    ]
    for label, stored, hashed in rows:
        lines.append(f"| {label} | {stored:.3f} s | {hashed:.3f} s | {hashed / stored:.1%} |")
    lines += [
        "",
        f"| step loading a stored input of {args.mb} MB | check off | check on | on / off |",
        "|---|---:|---:|---:|",
        f"| run_task (load, sum, keep the sum) | {off:.3f} s | {on:.3f} s | {on / off:.2f}x |",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(
            "# In-place detection overhead (`bench/bench_in_place.py`)\n\n"
            f"`python bench/bench_in_place.py --mb {args.mb} --repeat {args.repeat}`, best of {args.repeat}, "
            f"on this machine (load: {os.getloadavg()[0]:.1f}).\n\n" + text + "\n"
        )


if __name__ == "__main__":
    main()
