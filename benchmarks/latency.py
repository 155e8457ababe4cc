"""CPU latency of the maskdet model on every backend: torch `.pt`, ONNX Runtime, OpenVINO (fp32, bf16) and INT8.

Usage: .venv/bin/python benchmarks/latency.py [--runs 30] [--sizes 640 416] [--threads 1 2] [--images 20]

Times the whole model (letterbox, face detector, NMS, crops, mask classifier, thresholds) per image on
real test images, at each detector input size and thread count, all in one run, and scores each
backend and size on the test split (mAP50). The models at 640 px are the ones `dvc repro` exported
into models/; other sizes are exported (and the INT8 model calibrated) into a temporary folder first.
Prints a markdown table with median and p90 latency and the speed-up over the torch `.pt` model at
the same size and thread count.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from maskdet.core import configure_ultralytics, setup_runtime
from maskdet.data import load_split
from maskdet.evaluate import class_metrics, summary_metrics
from maskdet.inference import Detector, export_onnx, export_openvino, quantize_openvino
from maskdet.train import evaluate_model

VARIANTS = ("torch .pt", "onnxruntime fp32", "openvino fp32", "openvino bf16", "openvino int8")


def model_files(paths, size, folder, calibration):
    "The .pt, ONNX, OpenVINO fp32 and INT8 files of the model at detector input `size`."
    if size == 640 and (paths.models / "openvino" / "fp32" / "model.xml").is_file():
        onnx, fp32 = paths.models / "model.onnx", paths.models / "openvino" / "fp32" / "model.xml"
        int8 = paths.models / "openvino" / "int8" / "model.xml"
    else:
        onnx = export_onnx(paths.models / "best.pt", folder / str(size), imgsz=size)
        fp32 = export_openvino(onnx, folder / str(size) / "openvino" / "fp32")
        int8 = folder / str(size) / "openvino" / "int8" / "model.xml"
    if not int8.is_file():
        int8 = quantize_openvino(fp32, calibration, int8.parent)
    return {
        "torch .pt": (paths.models / "best.pt", "torch", "f32"),
        "onnxruntime fp32": (onnx, "onnxruntime", "f32"),
        "openvino fp32": (fp32, "openvino", "f32"),
        "openvino bf16": (fp32, "openvino", "bf16"),
        "openvino int8": (int8, "openvino", "f32"),
    }


def load(paths, path, backend, precision, threads, size):
    "A Detector on `threads` threads; the torch model's detector input set to `size`."
    configure_ultralytics(paths, threads)
    detector = Detector(path, backend, threads=threads, precision=precision)
    detector.config["detector_imgsz"] = size
    return detector


def latencies(detector, images, runs):
    "Milliseconds per `predict`, over `runs` calls cycling through `images`, after one warm-up call."
    detector.predict(images[0])
    times = []
    for i in range(runs):
        start = time.perf_counter()
        detector.predict(images[i % len(images)])
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), statistics.quantiles(times, n=10)[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 416])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()
    paths = setup_runtime()
    if not (paths.models / "best.pt").is_file():
        raise SystemExit("models/best.pt not found: run `dvc repro` first")
    test = load_split(paths.processed, "test")
    images = [image.rgb() for image in test[: args.images]]
    rng = np.random.default_rng(0)
    train = load_split(paths.processed, "train")
    calibration = [train[i].rgb() for i in rng.choice(len(train), 100, replace=False)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            files = model_files(paths, size, Path(tmp), calibration)
            for threads in args.threads:
                for name in VARIANTS:
                    detector = load(paths, *files[name], threads, size)
                    median, p90 = latencies(detector, images, args.runs)
                    accuracy = None
                    if threads == max(args.threads):
                        evaluation = evaluate_model(detector.model, test)
                        accuracy = summary_metrics(class_metrics(evaluation, detector.thresholds))["mAP50"]
                    rows.append(
                        {
                            "size": size,
                            "threads": threads,
                            "variant": name,
                            "median": median,
                            "p90": p90,
                            "mAP50": accuracy,
                        }
                    )
    sizes = {(r["size"], r["threads"]): r["median"] for r in rows if r["variant"] == "torch .pt"}
    shapes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
    sizes_seen = ", ".join(shapes[:4]) + (", ..." if len(shapes) > 4 else "")
    print(
        f"maskdet latency per image: {len(images)} real test images ({sizes_seen}), "
        f"{args.runs} timed runs each, same run\n"
    )
    print("| detector input | threads | backend | median ms | p90 ms | vs torch .pt | test mAP50 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mAP = f"{r['mAP50']:.4f}" if r["mAP50"] is not None else ""
        print(
            f"| {r['size']} | {r['threads']} | {r['variant']} | {r['median']:.1f} | {r['p90']:.1f} | "
            f"{sizes[(r['size'], r['threads'])] / r['median']:.2f}x | {mAP} |"
        )


if __name__ == "__main__":
    main()
