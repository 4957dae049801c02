"""Serving benchmark: %serve's server (transformer in process) vs KServe's split layout (transformer server ->
predictor server) vs a plain FastAPI endpoint, on the same scikit-learn model and notebook transformer.

    python bench/bench_serve.py [--requests 500] [--duration 5] [--connections 8] [--out bench/RESULTS-serve.md]

Measures start-up to ready (first: cold, later: forked by the warm process), p50/p99 latency of sequential V1 requests (one keep-alive connection) and
throughput under concurrency with wrk (Debian package). Prints a table and the ratios against the targets.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NOTEBOOK = """
import numpy as np
from sklearn.linear_model import LogisticRegression
tokenizer = {"A": 0, "C": 1, "G": 2, "U": 3}
def counts(seq):
    return [sum(1 for c in seq if tokenizer[c] == k) for k in range(4)]
def process_features(rows):
    return np.array([counts(s) for s in rows], dtype=float)
rng = np.random.default_rng(0)
train = ["".join(rng.choice(list("ACGU"), 30)) for _ in range(400)]
model = LogisticRegression().fit(process_features(train), [int(s.count("G") > s.count("C")) for s in train])
"""
BODY = json.dumps({"instances": ["ACGUACGUACGUAAGGCCUU", "GGGGCCAUAUAUGCGCAAAU"]})

FASTAPI_APP = textwrap.dedent('''
    """The baseline: the same package behind one FastAPI route, no KServe."""
    import sys
    from pathlib import Path
    import uvicorn
    from fastapi import FastAPI, Request
    from nbmagic.serve import formats, transformer
    from nbmagic.serve.package import open_package

    pkg = open_package(Path(sys.argv[1]))
    predict = formats.load_predict(pkg.model_dir, pkg.manifest["kind"], pkg.manifest["model_file"])
    transform = transformer.load(pkg.transformer_dir)
    app = FastAPI()

    @app.post("/v1/models/{name}:predict")
    async def infer(name: str, request: Request):
        body = await request.json()
        return {"predictions": predict(transform(body["instances"])).tolist()}

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sequential(targets: dict[str, tuple[int, str]], n: int) -> dict[str, list[float]]:
    """``n`` timed requests per layout (after 20 untimed), one keep-alive connection each, taken in turns: request
    i goes to every layout in a rotating order, so all layouts see the same moments of the machine's load."""
    headers = {"Content-Type": "application/json"}
    conns = {label: http.client.HTTPConnection("127.0.0.1", port) for label, (port, _path) in targets.items()}
    times: dict[str, list[float]] = {label: [] for label in targets}
    labels = list(targets)
    for i in range(n + 20):
        for label in labels[i % len(labels) :] + labels[: i % len(labels)]:
            conn = conns[label]
            t0 = time.perf_counter()
            conn.request("POST", targets[label][1], BODY, headers)
            response = conn.getresponse()
            data = response.read()
            if i >= 20:  # warm-up excluded
                times[label].append(time.perf_counter() - t0)
            assert response.status == 200, data
    for conn in conns.values():
        conn.close()
    return times


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return times[len(times) // 2] * 1000, times[int(len(times) * 0.99) - 1] * 1000


def throughput(port: int, path: str, duration: int, connections: int, script: Path) -> float:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "-s", str(script), f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def wait_ready(port: int, path: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited before it was ready")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("POST", path, BODY, {"Content-Type": "application/json"})
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("baseline server not ready")


SERVE_CELL = (
    "import time as _time\n"
    "_t = _time.perf_counter()\n"
    "_server = %serve model --transformer process_features --with tokenizer --name first\n"
    "print('SERVE-SECONDS', _time.perf_counter() - _t)\n"
    "_server.stop()\n"
)


def kernel_first_serve(setup_first: bool, timeout: float = 300) -> float:
    """Seconds of the first ``%serve`` in a fresh Jupyter kernel, timed inside the kernel. ``setup_first``: the
    notebook's set-up cell (imports, training) runs before ``%load_ext nbmagic`` (the warm process then starts
    with nothing to overlap it: the worst case), else after it (the usual order: extension first)."""
    from jupyter_client.manager import start_new_kernel

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    manager, client = start_new_kernel(kernel_name="python3", env=env)
    try:
        cells = ["%load_ext nbmagic", NOTEBOOK]
        if setup_first:
            cells.reverse()
        printed: list[str] = []
        for code in [*cells, SERVE_CELL]:
            reply = client.execute_interactive(
                code, timeout=timeout, output_hook=lambda m: printed.append(m["content"].get("text", ""))
            )
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"cell failed in the kernel: {reply['content'].get('evalue')}")
        words = "".join(printed).split()
        return float(words[words.index("SERVE-SECONDS") + 1])
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--startups", type=int, default=3, help="start-ups per layout (the median is reported)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measuring rounds (medians reported)")
    parser.add_argument("--kernels", type=int, default=3, help="fresh kernels per first-%%serve measure (median)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as markdown here")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")

    load_at_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="nbmagic-bench-serve-"))
    os.environ["NBMAGIC_HOME"] = str(work / "home")
    from IPython.core.interactiveshell import InteractiveShell

    from nbmagic.serve import local, warm
    from nbmagic.serve.api import make_package

    shell = InteractiveShell.instance()
    shell.run_cell(NOTEBOOK, store_history=True).raise_error()
    ns = shell.user_ns
    packages = {
        split: make_package(
            ns["model"],
            name="bench-split" if split else "bench",  # one live server per name: two names, both layouts up
            model_var="model",
            transformer=ns["process_features"],
            transformer_var="process_features",
            with_objects={"tokenizer": ns["tokenizer"]},
        )
        for split in (False, True)
    }
    package = packages[False]
    script = work / "post.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY)}\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    path = "/v1/models/bench:predict"
    # the first %serve in fresh kernels, both cell orders, interleaved
    in_kernel: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.kernels):
        for setup_first in (False, True):
            in_kernel[setup_first].append(kernel_first_serve(setup_first))
    kernel_first = {k: statistics.median(v) for k, v in in_kernel.items()}
    paths: dict[str, str] = {}
    pids: dict[str, list[int]] = {}
    ports: dict[str, int] = {}
    startup: dict[str, float] = {}
    first: dict[str, float] = {}
    stops = []
    # a kernel's first %serve: the warm process starts when the extension loads, the notebook's set-up cell
    # runs, then %serve (it waits for whatever import time is left)
    warm.stop()
    warm.prestart()
    shell.run_cell(NOTEBOOK, store_history=True).raise_error()
    t0 = time.perf_counter()
    local.serve(packages[False]).stop()
    after_load = time.perf_counter() - t0
    try:
        for label, split in (
            ("%serve (transformer in process)", False),
            ("KServe split: transformer -> predictor", True),
        ):
            starts = []
            if not split:  # the first start pays the imports (no warm process yet), as a kernel's first %serve may
                warm.stop()  # (only before the first layout: the warm process's servers end with it)
            for _ in range(args.startups + 1):
                t0 = time.perf_counter()
                server = local.serve(packages[split], split=split)
                starts.append(time.perf_counter() - t0)
                if len(starts) < args.startups + 1:
                    server.stop()
            first[label] = starts[0]
            startup[label] = statistics.median(starts[1:])
            ports[label] = server.port
            pids[label] = [proc.popen.pid for proc in server.processes]
            paths[label] = f"/v1/models/{server.name}:predict"
            stops.append(server.stop)

        app = work / "fastapi_app.py"
        app.write_text(FASTAPI_APP)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        # cold processes side by side, no warm process: ours (`python -m nbmagic.serve.server`, what
        # NBMAGIC_SERVE_WARM=0 starts) and the FastAPI app, each until its first prediction; wall and CPU seconds
        # (CPU: the process's own work, which the machine's load hardly changes)
        cold: dict[str, list[tuple[float, float]]] = {"ours": [], "fastapi": []}
        for i in range(args.startups):
            for which in ("ours", "fastapi"):
                port = free_port()
                argv = (
                    ["-m", "nbmagic.serve.server", "--package", str(package.path), "--name", "bench"]
                    + ["--http-port", str(port)]
                    if which == "ours"
                    else [str(app), str(package.path), str(port)]
                )
                t0 = time.perf_counter()
                proc = subprocess.Popen([sys.executable, *argv], env=env, stderr=subprocess.DEVNULL)
                wait_ready(port, path, proc)
                cold[which].append((time.perf_counter() - t0, cpu_seconds(proc.pid)))
                if which == "ours" or i < args.startups - 1:
                    proc.terminate()
                    proc.wait()
        starts = [wall for wall, _cpu in cold["fastapi"]]
        label = "plain FastAPI endpoint"
        startup[label] = first[label] = statistics.median(starts)
        ports[label] = port
        pids[label] = [proc.pid]
        paths[label] = path
        stops.append(lambda: (proc.terminate(), proc.wait()))

        # interleaved rounds: the machine's load drifts, so every layout sees the same conditions
        # and within a round the sequential requests take turns, one to each layout
        times: dict[str, list[float]] = {k: [] for k in ports}
        rates: dict[str, list[float]] = {k: [] for k in ports}
        cpu = {k: 0.0 for k in ports}
        for round_ in range(args.rounds):
            before = {k: sum(cpu_seconds(pid) for pid in pids[k]) for k in ports}
            for label, taken in sequential(
                {k: (ports[k], paths[k]) for k in ports}, args.requests // args.rounds
            ).items():
                times[label] += taken
                cpu[label] += sum(cpu_seconds(pid) for pid in pids[label]) - before[label]
            labels = list(ports)
            for label in labels[round_ % len(labels) :] + labels[: round_ % len(labels)]:  # each goes first in turn
                rates[label].append(throughput(ports[label], paths[label], args.duration, args.connections, script))
    finally:
        for stop in stops:
            stop()
    rows = [
        (label, first[label], startup[label], *percentiles(times[label]), statistics.median(rates[label]))
        for label in ports
    ]
    per_request = {k: cpu[k] / (args.rounds * (args.requests // args.rounds + 20)) * 1e6 for k in ports}

    ours, split, plain = rows
    lines = [
        f"Machine: {os.cpu_count()} cores (load average {load_at_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end), "
        f"Python {platform.python_version()}; model: scikit-learn LogisticRegression "
        f"+ notebook transformer (tokenizer counts), 2 raw sequences per V1 request.",
        f"Sequential: {args.requests} requests per layout, one keep-alive connection each, the layouts taking turns "
        f"request by request (20 warm-up per round); start-up: median of {args.startups}, from "
        f"starting the process(es) to the first ready answer; throughput: median of {args.rounds} `wrk -t2 -c{args.connections} -d{args.duration}s` "
        f"(client on the same 2 cores); the three layouts are measured in {args.rounds} interleaved rounds, "
        "each layout's wrk run going first in turn.",
        "",
        "| layout | first start-up (s) | later start-ups (s) | p50 (ms) | p99 (ms) | server CPU per request (us) "
        "| throughput (req/s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {label} | {f:.2f} | {s:.2f} | {p50:.2f} | {p99:.2f} | {per_request[label]:.0f} | {rps:,.0f} |"
            for label, f, s, p50, p99, rps in rows
        ],
        "",
        f"- %serve vs plain FastAPI: throughput {ours[5] / plain[5]:.2f}x (target >= 1: "
        f"{'met' if ours[5] >= plain[5] else 'NOT met'}), p50 ratio {ours[3] / plain[3]:.2f} (ours / FastAPI; target "
        f"<= 1: {'met' if ours[3] <= plain[3] else 'NOT met'}), server CPU per sequential request "
        f"{per_request[ours[0]] / per_request[plain[0]]:.2f} (ours / FastAPI)",
        f"- %serve vs split: p50 {split[3] / ours[3]:.2f}x lower, throughput {ours[5] / split[5]:.2f}x",
        f"- first %serve in a fresh Jupyter kernel (median of {args.kernels}, timed in the kernel): "
        f"`%load_ext nbmagic`, set-up cell, `%serve`: {kernel_first[False]:.2f} s (target <= 2.0 s: "
        f"{'met' if kernel_first[False] <= 2.0 else 'NOT met'}; each run: "
        f"{', '.join(f'{t:.2f}' for t in in_kernel[False])}); set-up cell, `%load_ext nbmagic`, `%serve` (nothing "
        f"overlaps the warm process's imports): {kernel_first[True]:.2f} s (each: "
        f"{', '.join(f'{t:.2f}' for t in in_kernel[True])})",
        f"- cold server process to its first prediction, median of {args.startups} each, side by side: ours "
        f"{statistics.median(w for w, _ in cold['ours']):.2f} s wall, "
        f"{statistics.median(c for _, c in cold['ours']):.2f} s CPU; FastAPI "
        f"{statistics.median(w for w, _ in cold['fastapi']):.2f} s wall, "
        f"{statistics.median(c for _, c in cold['fastapi']):.2f} s CPU",
        f"- start-up in this process: %serve right after the warm process was started: "
        f"{after_load:.2f} s; fully cold (the warm "
        f"process starts with the %serve): {ours[1]:.2f} s (FastAPI's own cold start {plain[1]:.2f} s); later "
        f"%serve {ours[2]:.2f} s (target <= 0.5 s: {'met' if ours[2] <= 0.5 else 'NOT met'}; forked by the warm process)",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(
            "## Serving (`%serve`)\n\nCommand: `python bench/bench_serve.py --out bench/RESULTS-serve.md`"
            "\n\n" + text + "\n"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
