"""Load test: concurrent gradio_client requests against the app on 127.0.0.1 (loopback only).

    nice python bench/load_test.py                         # tiny random models (built here)
    nice python bench/load_test.py --checkpoints checkpoints --semantic-models local/segdemo-camvid

The app runs in a subprocess (``python bench/load_test.py --serve``, i.e. ``app.create_app()``
with the settings of ``python app.py``) so its peak memory is its own: VmHWM from
``/proc/PID/status``. Inside it a sampler thread records how many models the cache holds
(``segdemo.models.cached_model_ids``) every 5 ms and how many loads happened.

Phase 1, ``--requests`` (20) requests submitted at once, spread round-robin over
``/semantic``, ``/instance``, ``/panoptic`` and ``/compare``, alternating the semantic model
between ``--semantic-models`` so the cache (``SEGDEMO_MODEL_CACHE``, 2) must evict: reports
errors, latency p50/p95 (submit to result, queue wait included), peak RSS, and the most
models cached at any sample (must stay <= the bound).

Phase 2, ``--burst`` (60) requests at once against the default queue (``max_size`` 32,
one worker): the ones it cannot take are refused at once with gradio's "queue is full"
message; the rest are served. Everything is bounded: a fixed number of requests, a
timeout per request, and the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UNIVERSAL = "local/load-mask2former"
TINY_SEMANTIC = ("local/load-segformer-a", "local/load-segformer-b")


# --------------------------------------------------------------------------- server side


def serve(port: int, stats_path: Path) -> None:
    """Run the app on 127.0.0.1:``port``; write cache/memory stats to ``stats_path`` until SIGTERM."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import app
    from segdemo import models

    loads = {"count": 0}
    original = models._load

    def counting_load(spec):
        loads["count"] += 1
        return original(spec)

    models._load = counting_load
    demo = app.create_app()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        **app.launch_kwargs(),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    most = 0
    last_write = 0.0
    while not stop.is_set():
        most = max(most, len(models.cached_model_ids()))
        if time.monotonic() - last_write > 0.2:
            _write_stats(stats_path, most, loads["count"])
            last_write = time.monotonic()
        time.sleep(0.005)
    _write_stats(stats_path, most, loads["count"])
    demo.close()


def _write_stats(path: Path, most: int, loads: int) -> None:
    from segdemo import models

    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    stats = {
        "max_cached": most,
        "cache_bound": models.cache_size(),
        "loads": loads,
        "peak_rss_mb": int(fields["VmHWM"].split()[0]) / 1024,
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stats))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- client side


def build_tiny_models(folder: Path) -> Path:
    from tests.builders import build_tiny

    for name in TINY_SEMANTIC:
        build_tiny("segformer", folder / name.split("/")[1], seed=len(name) + ord(name[-1]))
    build_tiny("mask2former", folder / UNIVERSAL.split("/")[1])
    return folder


def _photo(path: Path, seed: int = 0) -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:384, 0:512]
    rgb = np.stack([x // 2, y // 2, (x + y) // 4], -1) + rng.integers(0, 30, (384, 512, 3))
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path)
    return str(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(
    checkpoints: Path, stats: Path, env: dict[str, str]
) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve",
            str(port),
            "--stats",
            str(stats),
        ],
        cwd=ROOT,
        env=dict(
            os.environ,
            SEGDEMO_CHECKPOINTS=str(checkpoints),
            HF_HUB_OFFLINE="1",
            GRADIO_ANALYTICS_ENABLED="False",
            **env,
        ),
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while not stats.exists():  # written once the app is up
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit("the app did not start; see its output above")
        time.sleep(0.2)
    return process, url


def _stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _requests(n: int, semantic_models: list[str], universal: str) -> list[tuple[str, tuple]]:
    """Round-robin over the four endpoints; the semantic model alternates."""
    plan = []
    for i in range(n):
        semantic = semantic_models[(i // 4) % len(semantic_models)]
        kind = i % 4
        if kind == 0:
            plan.append(("/semantic", (semantic, 0.5)))
        elif kind == 1:
            plan.append(("/instance", (universal, 0.5, 0.5, 0.5, 0.5)))
        elif kind == 2:
            plan.append(("/panoptic", (universal, 0.5, 0.5, 0.5, 0.5)))
        else:
            plan.append(("/compare", (semantic, universal, universal, 0.5)))
    return plan


def fire(
    url: str, photos: list[str], plan: list[tuple[str, tuple]], timeout: float, downloads: Path
) -> list[dict]:
    """Submit every request of ``plan`` at once, one client (user) each; one record per request.

    The clients connect first (each reads the app's API description), one after the other,
    so that the requests themselves arrive together.
    """
    from gradio_client import Client, handle_file

    clients = [
        Client(url, verbose=False, download_files=str(downloads / str(i))) for i in range(len(plan))
    ]
    deadline = time.monotonic() + timeout

    def one(index: int) -> dict:
        api_name, args = plan[index]
        started = time.perf_counter()
        try:
            photo = photos[index % len(photos)]
            job = clients[index].submit(handle_file(photo), *args, api_name=api_name)
            job.result(timeout=max(1.0, deadline - time.monotonic()))
            error = None
        except Exception as err:  # AppError for refusals and our messages, TimeoutError
            error = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return {
            "api": api_name,
            "model": args[0],
            "seconds": time.perf_counter() - started,
            "error": error,
        }

    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        return list(pool.map(one, range(len(plan))))


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def phase(
    name: str, checkpoints: Path, photos: list[str], plan, env: dict[str, str], timeout: float
) -> dict:
    with tempfile.TemporaryDirectory(prefix="segdemo-load-") as scratch:
        stats_path = Path(scratch) / "stats.json"
        process, url = _start_server(checkpoints, stats_path, env)
        try:
            started = time.perf_counter()
            records = fire(url, photos, plan, timeout, Path(scratch))
            wall = time.perf_counter() - started
            time.sleep(0.5)  # one more stats write after the last request
        finally:
            _stop_server(process)
        stats = json.loads(stats_path.read_text())
    ok = [r["seconds"] for r in records if r["error"] is None]
    errors = [r for r in records if r["error"] is not None]
    return {
        "phase": name,
        "requests": len(records),
        "served": len(ok),
        "errors": len(errors),
        "error_messages": sorted({r["error"] for r in errors}),
        "p50_s": round(_percentile(ok, 50), 2),
        "p95_s": round(_percentile(ok, 95), 2),
        "max_s": round(max(ok), 2) if ok else None,
        "wall_s": round(wall, 2),
        "served_per_s": round(len(ok) / wall, 2),
        "by_endpoint": {
            api: sum(1 for r in records if r["api"] == api and r["error"] is None)
            for api in ("/semantic", "/instance", "/panoptic", "/compare")
        },
        **stats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--stats", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--burst", type=int, default=60)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per phase")
    parser.add_argument(
        "--checkpoints", type=Path, help="use these checkpoints (default: build tiny ones)"
    )
    parser.add_argument("--semantic-models", nargs="+", default=list(TINY_SEMANTIC))
    parser.add_argument("--universal-model", default=UNIVERSAL)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--same-photo",
        action="store_true",
        help="every request sends the same photo (default: one photo per request, as separate "
        "users would); identical requests give identical outputs, which gradio caches under one name",
    )
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.stats)
        return 0
    with tempfile.TemporaryDirectory(prefix="segdemo-load-models-") as scratch:
        checkpoints = args.checkpoints or build_tiny_models(Path(scratch) / "checkpoints")
        count = 1 if args.same_photo else max(args.requests, args.burst)
        photos = [_photo(Path(scratch) / f"photo{i}.png", seed=i) for i in range(count)]
        plan = _requests(args.requests, args.semantic_models, args.universal_model)
        # 3 models in use, room for 2: the cache must evict and reload
        load = phase("load", checkpoints, photos, plan, {"SEGDEMO_MODEL_CACHE": "2"}, args.timeout)
        burst_plan = [("/semantic", (args.semantic_models[0], 0.5))] * args.burst
        burst = phase("queue", checkpoints, photos, burst_plan, {}, args.timeout)
    results = [load, burst]
    for result in results:
        print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    problems = []
    if load["errors"]:
        problems.append(f"{load['errors']} of {load['requests']} load requests failed")
    if load["max_cached"] > load["cache_bound"]:
        problems.append(f"cache held {load['max_cached']} models, bound {load['cache_bound']}")
    refused = [m for m in burst["error_messages"] if "queue" not in m.lower()]
    if refused or not burst["errors"]:
        problems.append(
            f"burst: expected only 'queue is full' refusals, got {burst['error_messages']}"
        )
    for problem in problems:
        print("FAIL:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
