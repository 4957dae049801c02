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


def sequential(port: int, path: str, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "application/json"}
    times = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        conn.request("POST", path, BODY, headers)
        response = conn.getresponse()
        data = response.read()
        if i >= 20:  # warm-up excluded
            times.append(time.perf_counter() - t0)
        assert response.status == 200, data
    conn.close()
    return times


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
            raise RuntimeError("baseline server exited")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("POST", path, BODY, {"Content-Type": "application/json"})
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("baseline server not ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--startups", type=int, default=3, help="start-ups per layout (the median is reported)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measuring rounds (medians reported)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as markdown here")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")

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
    paths: dict[str, str] = {}
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
            paths[label] = f"/v1/models/{server.name}:predict"
            stops.append(server.stop)

        app = work / "fastapi_app.py"
        app.write_text(FASTAPI_APP)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        starts = []
        for _ in range(args.startups):
            port = free_port()
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, str(app), str(package.path), str(port)], env=env)
            wait_ready(port, path, proc)
            starts.append(time.perf_counter() - t0)
            if len(starts) < args.startups:
                proc.terminate()
                proc.wait()
        label = "plain FastAPI endpoint"
        startup[label] = first[label] = statistics.median(starts)
        ports[label] = port
        paths[label] = path
        stops.append(lambda: (proc.terminate(), proc.wait()))

        # interleaved rounds: the machine's load drifts, so every layout sees the same conditions
        times: dict[str, list[float]] = {k: [] for k in ports}
        rates: dict[str, list[float]] = {k: [] for k in ports}
        for _ in range(args.rounds):
            for label, port in ports.items():
                times[label] += sequential(port, paths[label], args.requests // args.rounds)
            for label, port in ports.items():
                rates[label].append(throughput(port, paths[label], args.duration, args.connections, script))
    finally:
        for stop in stops:
            stop()
    rows = [
        (label, first[label], startup[label], *percentiles(times[label]), statistics.median(rates[label]))
        for label in ports
    ]

    ours, split, plain = rows
    lines = [
        f"Machine: {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the end), "
        f"Python {platform.python_version()}; model: scikit-learn LogisticRegression "
        f"+ notebook transformer (tokenizer counts), 2 raw sequences per V1 request.",
        f"Sequential: {args.requests} requests on one keep-alive connection (20 warm-up per round); start-up: median of {args.startups}, from "
        f"starting the process(es) to the first ready answer; throughput: median of {args.rounds} `wrk -t2 -c{args.connections} -d{args.duration}s` "
        f"(client on the same 2 cores); the three layouts are measured in {args.rounds} interleaved rounds.",
        "",
        "| layout | first start-up (s) | later start-ups (s) | p50 (ms) | p99 (ms) | throughput (req/s) |",
        "|---|---:|---:|---:|---:|---:|",
        *[
            f"| {label} | {f:.2f} | {s:.2f} | {p50:.2f} | {p99:.2f} | {rps:,.0f} |"
            for label, f, s, p50, p99, rps in rows
        ],
        "",
        f"- %serve vs plain FastAPI: throughput {ours[5] / plain[5]:.2f}x (target >= 1: "
        f"{'met' if ours[5] >= plain[5] else 'NOT met'}), p50 ratio {ours[3] / plain[3]:.2f} (ours / FastAPI; target "
        f"<= 1: {'met' if ours[3] <= plain[3] else 'NOT met'})",
        f"- %serve vs split: p50 {split[3] / ours[3]:.2f}x lower, throughput {ours[5] / split[5]:.2f}x",
        f"- start-up, first %serve in a kernel (warm process started at %load_ext, %serve after the set-up cell): "
        f"{after_load:.2f} s (target <= 2.0 s: {'met' if after_load <= 2.0 else 'NOT met'}); fully cold (the warm "
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
