"""Load on the HTTP API: concurrent clients sending real images to a real `maskdet serve` on 127.0.0.1.

Usage: .venv/bin/python benchmarks/load.py [--requests 2000] [--clients 4] [--batch 16] [--model models]

Starts the API (uvicorn) on a free loopback port with a fresh prediction log, warms it up, then runs
two loads with the same clients and images in the same run: single-image requests to /predict, and
batches of `--batch` images to /predict/batch (the same number of images in all). Requests go to
127.0.0.1 only, in a bounded loop. Prints a markdown table: requests/s, images/s, latency median and
p95, errors, and whether every image is in the prediction log.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from maskdet.core import project_paths
from maskdet.launch import free_port
from maskdet.predictions import PredictionLog

BIN = Path(sys.executable).parent


def start_server(paths, model, log, port, output):
    env = os.environ | {"MASKDET_MODEL": str(model), "MASKDET_PREDICTION_LOG": str(log), "MASKDET_MAX_BATCH": "64"}
    process = subprocess.Popen(
        [BIN / "maskdet", "serve", "--port", str(port)],
        cwd=paths.root,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("the API did not start: see its output above")


def run_load(url, endpoint, uploads, requests, clients):
    "Send `requests` requests from `clients` threads; each request's upload is the next in `uploads`."
    latencies, errors, lock, counter = [], [], threading.Lock(), iter(range(requests))

    def client():
        with httpx.Client(base_url=url, timeout=60) as session:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                try:
                    answer = session.post(endpoint, files=uploads[i % len(uploads)])
                    ok = answer.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    latencies.append((time.perf_counter() - start) * 1000)
                    if not ok:
                        errors.append(i)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    return time.perf_counter() - start, latencies, len(errors)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=2000, help="single-image requests (the batch load sends as many images)"
    )
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16, help="images per batch request (default: MASKDET_MAX_BATCH)")
    parser.add_argument("--model", default="models")
    args = parser.parse_args()
    paths = project_paths()
    images = sorted((paths.processed / "images" / "test").glob("*"))
    if not images:
        raise SystemExit("no test images in data/processed: run `dvc repro` first")
    blobs = [(p.name, p.read_bytes()) for p in images]
    singles = [{"file": blob} for blob in blobs]
    batches = [
        [("files", blobs[(i * args.batch + k) % len(blobs)]) for k in range(args.batch)] for i in range(len(blobs))
    ]
    with tempfile.TemporaryDirectory() as tmp:
        log, port = Path(tmp) / "predictions.db", free_port()
        with open(Path(tmp) / "server.log", "w") as output:
            server = start_server(paths, args.model, log, port, output)
        url = f"http://127.0.0.1:{port}"
        try:
            info = httpx.get(f"{url}/model").json()
            run_load(url, "/predict", singles, 40, args.clients)
            warm = len(PredictionLog(log))
            rows = []
            for name, endpoint, uploads, requests, per in (
                ("single image, /predict", "/predict", singles, args.requests, 1),
                (
                    f"batch of {args.batch}, /predict/batch",
                    "/predict/batch",
                    batches,
                    args.requests // args.batch,
                    args.batch,
                ),
            ):
                before = len(PredictionLog(log))
                seconds, latencies, errors = run_load(url, endpoint, uploads, requests, args.clients)
                logged = len(PredictionLog(log)) - before
                rows.append(
                    {
                        "load": name,
                        "requests": requests,
                        "images": requests * per,
                        "seconds": seconds,
                        "req_s": requests / seconds,
                        "img_s": requests * per / seconds,
                        "median": statistics.median(latencies),
                        "p95": statistics.quantiles(latencies, n=20)[-1],
                        "errors": errors,
                        "logged": logged,
                    }
                )
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(
        f"maskdet API load: {info['backend']} {info['path']} ({info['precision']}), "
        f"{args.clients} concurrent clients, {len(images)} real test images, "
        f"{os.cpu_count()} cores shared by server and clients, {warm} warm-up requests\n"
    )
    print("| load | requests | images | s | req/s | images/s | median ms | p95 ms | errors | images in the log |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['load']} | {r['requests']} | {r['images']} | {r['seconds']:.1f} | {r['req_s']:.1f} | "
            f"{r['img_s']:.1f} | {r['median']:.0f} | {r['p95']:.0f} | {r['errors']} | {r['logged']}/{r['images']} |"
        )
    print(f"\nbatch / single images per second: {rows[1]['img_s'] / rows[0]['img_s']:.2f}x")


if __name__ == "__main__":
    main()
