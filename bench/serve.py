"""Load test of serve.py on loopback: requests/s and latency, with and without batching.

Starts the server (a real process on 127.0.0.1, a free port) once per setting, then N clients
each send M requests (`POST /read`, one sample CAPTCHA per request) as fast as answers come
back. The run is bounded: N x M requests per row, and the server is stopped by its process id.

    python bench/serve.py --requests 64 --clients 1 8 32
    python bench/serve.py --model saved_model/crnn_ctc_final.keras
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "data" / "sample200"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | Path, *flags: str) -> tuple[subprocess.Popen, str]:
    """serve.py as its own process on a free loopback port, once /health answers: the
    process and its URL. Stop it with `stop`."""
    port = free_port()
    log = tempfile.TemporaryFile()  # not a pipe: a full pipe would block the server
    process = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--model", str(model), "--port",
                                str(port), *flags], stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"serve.py exited with {process.returncode}: {log.read().decode()}")
        try:
            httpx.get(f"{url}/health", timeout=1).raise_for_status()
            return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    stop(process)
    raise RuntimeError("serve.py did not start in 120 s")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM by process id (uvicorn shuts down cleanly), SIGKILL if it has not within 15 s."""
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def load(url: str, images: list[bytes], clients: int, requests_each: int) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) of `clients` clients sending `requests_each` requests each."""
    def client(index: int) -> list[float]:
        latencies = []
        with httpx.Client(base_url=url, timeout=120) as http:
            for i in range(requests_each):
                image = images[(index * requests_each + i) % len(images)]
                start = time.perf_counter()
                http.post("/read", content=image).raise_for_status()
                latencies.append(time.perf_counter() - start)
        return latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = np.concatenate(list(pool.map(client, range(clients)))) * 1000
    elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "saved_model" / "crnn_ctc_final.onnx"))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=64, help="requests per client")
    args = parser.parse_args()

    images = [p.read_bytes() for p in sorted(SAMPLES.glob("*.png"))]
    print(f"model: {args.model}; {args.requests} requests per client")
    print(f"{'batching':<22} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for label, max_batch in (("off (--max-batch 1)", 1), ("on (--max-batch 64)", 64)):
        process, url = start_server(args.model, "--max-batch", str(max_batch))
        try:
            load(url, images, 1, 8)  # warm-up: the first model call traces or allocates
            for clients in args.clients:
                rate, p50, p99 = load(url, images, clients, args.requests)
                print(f"{label:<22} {clients:>7} {rate:>8.1f} {p50:>8.1f} {p99:>8.1f}")
        finally:
            stop(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
