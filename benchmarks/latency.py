"""CPU latency of the maskdet model on every backend: torch `.pt`, ONNX Runtime, OpenVINO (fp32, bf16) and INT8.

Usage: .venv/bin/python benchmarks/latency.py [--runs 30] [--passes 640 640,320] [--threads 1 2] [--images 20]

Times the whole model (letterbox, every detector pass, NMS, crops, mask classifier, thresholds) per
image on real test images, every variant in turn on each image (so the machine's drift falls on all
alike), for each set of detector passes (`model.detector_sizes`: "640" is one pass at 640 px, "640,320"
a pass at 640 and one at 320) and thread count, all in one run, and scores each backend and set of
passes on the test split (mAP50, labels as published). The models are the ones `dvc repro` exported into
models/ (the exported detector takes any input size); each set of passes is a copy of their model.json.
Prints a markdown table with median and p90 latency, the speed-up over the torch `.pt` model with the
same passes and threads, and the cost against the first set of passes (the baseline) with the same
backend and threads.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from maskdet.core import configure_ultralytics, setup_runtime
from maskdet.data import load_split
from maskdet.evaluate import class_metrics, summary_metrics
from maskdet.inference import Detector
from maskdet.train import evaluate_model

VARIANTS = ("torch .pt", "onnxruntime fp32", "openvino fp32", "openvino bf16", "openvino int8")


def with_passes(exported: Path, sizes: list[int], folder: Path) -> Path:
    "A copy of the folder holding `exported` (files linked), its model.json set to detector passes at `sizes`."
    folder.mkdir(parents=True, exist_ok=True)
    for file in exported.parent.iterdir():
        if file.is_file() and file.name != "model.json":
            (folder / file.name).symlink_to(file)
    config = json.loads((exported.parent / "model.json").read_text()) | {"detector_sizes": sizes}
    (folder / "model.json").write_text(json.dumps(config))
    return folder / exported.name


def model_files(paths, sizes, folder):
    "The .pt, ONNX, OpenVINO fp32 and INT8 files of the model, the exported ones set to detector passes at `sizes`."
    name = "-".join(map(str, sizes))
    onnx = with_passes(paths.models / "model.onnx", sizes, folder / name / "onnx")
    fp32 = with_passes(paths.models / "openvino" / "fp32" / "model.xml", sizes, folder / name / "fp32")
    int8 = with_passes(paths.models / "openvino" / "int8" / "model.xml", sizes, folder / name / "int8")
    return {
        "torch .pt": (paths.models / "best.pt", "torch", "f32"),
        "onnxruntime fp32": (onnx, "onnxruntime", "f32"),
        "openvino fp32": (fp32, "openvino", "f32"),
        "openvino bf16": (fp32, "openvino", "bf16"),
        "openvino int8": (int8, "openvino", "f32"),
    }


def load(paths, path, backend, precision, threads, sizes):
    "A Detector on `threads` threads with detector passes at `sizes`."
    configure_ultralytics(paths, threads)
    detector = Detector(path, backend, threads=threads, precision=precision)
    detector.config["detector_sizes"] = sizes
    return detector


def latencies(detectors, images, runs):
    """Median and p90 milliseconds per `predict` of each detector: `runs` rounds, each calling every detector on the
    next image, so that the machine's drift falls on all of them alike."""
    for detector in detectors.values():
        detector.predict(images[0])
    times = {key: [] for key in detectors}
    for i in range(runs):
        for key, detector in detectors.items():
            start = time.perf_counter()
            detector.predict(images[i % len(images)])
            times[key].append((time.perf_counter() - start) * 1000)
    return {key: (statistics.median(t), statistics.quantiles(t, n=10)[-1]) for key, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--passes", nargs="+", default=["640", "640,320"], help="sets of detector input sizes, the first the baseline"
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=20)
    args = parser.parse_args()
    paths = setup_runtime()
    if not (paths.models / "openvino" / "int8" / "model.xml").is_file():
        raise SystemExit("models/openvino/int8/model.xml not found: run `dvc repro` first")
    test = [image for image in load_split(paths.processed, "test", published=True) if image.kind == "scene"]
    images = [image.rgb() for image in test[: args.images]]
    passes = [[int(size) for size in text.split(",")] for text in args.passes]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {",".join(map(str, sizes)): (sizes, model_files(paths, sizes, Path(tmp))) for sizes in passes}
        for threads in args.threads:
            detectors = {
                (key, name): load(paths, *variants[name], threads, sizes)
                for key, (sizes, variants) in files.items()
                for name in VARIANTS
            }
            for (key, name), (median, p90) in latencies(detectors, images, args.runs).items():
                accuracy = None
                if threads == max(args.threads):
                    evaluation = evaluate_model(detectors[key, name].model, test)
                    accuracy = summary_metrics(class_metrics(evaluation, detectors[key, name].thresholds))["mAP50"]
                row = {"passes": key, "threads": threads, "variant": name, "median": median, "p90": p90}
                rows.append(row | {"mAP50": accuracy})
    torch_median = {(r["passes"], r["threads"]): r["median"] for r in rows if r["variant"] == "torch .pt"}
    baseline = {(r["variant"], r["threads"]): r["median"] for r in rows if r["passes"] == args.passes[0]}
    shapes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
    sizes_seen = ", ".join(shapes[:4]) + (", ..." if len(shapes) > 4 else "")
    print(
        f"maskdet latency per image: {len(images)} real test images ({sizes_seen}), "
        f"{args.runs} timed runs each, same run\n"
    )
    print(
        f"| detector passes | threads | backend | median ms | p90 ms | vs torch .pt | vs passes {args.passes[0]} "
        "| test mAP50 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mAP = f"{r['mAP50']:.4f}" if r["mAP50"] is not None else ""
        print(
            f"| {r['passes']} | {r['threads']} | {r['variant']} | {r['median']:.1f} | {r['p90']:.1f} | "
            f"{torch_median[(r['passes'], r['threads'])] / r['median']:.2f}x | "
            f"{r['median'] / baseline[(r['variant'], r['threads'])]:.2f}x | {mAP} |"
        )


if __name__ == "__main__":
    main()
