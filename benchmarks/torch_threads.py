"""ultralytics `.pt` inference with its own torch thread cap (cpu_count - 1) against every core.

Usage: .venv/bin/python benchmarks/torch_threads.py [--runs 30] [--imgsz 640]
Prints a markdown table: median and p90 latency per image for each thread count, and the speed-up
over ultralytics' default, measured in the same run on the same real images.
"""
import argparse
import os
import statistics
import time

from maskdet.core import load_params, setup_runtime
from maskdet.sources import configured_sources


def time_predictions(model, images, runs, imgsz):
    model.predict(images[0], imgsz=imgsz, verbose=False)
    latencies = []
    for i in range(runs):
        start = time.perf_counter()
        model.predict(images[i % len(images)], imgsz=imgsz, verbose=False)
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--imgsz", type=int, default=640)
    args = parser.parse_args()
    paths = setup_runtime()
    import ultralytics.utils.torch_utils as torch_utils
    from ultralytics import YOLO

    inputs = load_params("inputs")
    images = sorted((configured_sources(paths)[0].path / "images").glob("*.png"))[:10]
    cores = len(os.sched_getaffinity(0))
    baseline_threads = max(1, cores - 1)
    rows = []
    for threads in (baseline_threads, cores):
        torch_utils.NUM_THREADS = threads  # applied when the new model's predictor selects its device
        model = YOLO(paths.resolve(inputs["weights"]))
        latencies = time_predictions(model, [str(p) for p in images], args.runs, args.imgsz)
        rows.append((threads, statistics.median(latencies), statistics.quantiles(latencies, n=10)[-1]))
    base = rows[0][1]
    print(f"ultralytics .pt predict, {args.imgsz} px, {args.runs} runs, {cores} cores\n")
    print("| torch threads | median ms | p90 ms | speed-up vs ultralytics default |")
    print("|---|---|---|---|")
    for threads, median, p90 in rows:
        label = f"{threads} (ultralytics default)" if threads == baseline_threads else f"{threads} (maskdet)"
        print(f"| {label} | {median:.1f} | {p90:.1f} | {base / median:.2f}x |")


if __name__ == "__main__":
    main()
