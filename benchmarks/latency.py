"""CPU latency of the maskdet model on every backend against ultralytics' own `.pt` predict, end to end and per stage.

Usage: .venv/bin/python benchmarks/latency.py [--runs 30] [--images 10] [--passes 640,256 640] [--threads 2]
                                             [--no-accuracy] [--json FILE] [--models models]

What runs: ultralytics' own `YOLO(weights).predict(image, imgsz=640)` of the starting face detector
(params.yaml `inputs.weights`; it finds faces only, but it is what a peer runs, so it is the baseline),
and the maskdet model (faces and mask labels) as torch `.pt`, ONNX Runtime fp32, OpenVINO fp32, OpenVINO
bf16 (only on a CPU with bf16) and OpenVINO INT8 (the served model), for each set of detector passes
(`detector_sizes`: "640,256" is a pass at 640 px and one at 256) and thread count. The models are the
ones `dvc repro` exported into models/ (or `--models`).

On what: real scene photos of the test split grouped by their number of annotated faces ("1 face",
"5 faces": 4-6, "20 faces": 15 or more, and "all <= 8": 1-8, the photos the latency target is about),
`--images` photos per group (twice that for "all <= 8"), each JPEG-encoded once in memory (quality 90).

How: end to end is decoding the JPEG (Pillow, to RGB; to BGR for ultralytics) plus predict. Every
variant is called in turn on each photo (so the machine's drift falls on all alike), after untimed
rounds over every photo of the group (`COMPILE_AFTER` of them: OpenVINO has compiled the detector for
each photo's shape by then, as it has for a camera's frames, so no compilation is timed); `--runs` timed
rounds per group. For the maskdet variants, the stages are timed by wrapping `maskdet.faces`' letterbox,
decode_faces + merge_passes (NMS) and crop_faces, and the model's detector and classifier networks; "other"
is the rest (thresholds, labels).
Prints two markdown tables: end to end (median, p90, speed-up over ultralytics .pt predict with the
same threads, cost against the first set of passes, test mAP50 on the published labels of the whole
test split) and the median of each stage; `--json FILE` writes the rows for regenerating the README.
"""

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

import maskdet.faces
from maskdet.core import configure_ultralytics, load_params, setup_runtime
from maskdet.evaluate import class_metrics, evaluate_model, summary_metrics
from maskdet.inference import COMPILE_AFTER, Detector, find_model
from maskdet.prepare import LabelledImage, load_split

ULTRALYTICS = "ultralytics .pt predict"
# face-count groups: (fewest faces, most faces, photos as a multiple of --images)
GROUPS = {"1 face": (1, 1, 1), "5 faces": (4, 6, 1), "20 faces": (15, float("inf"), 1), "all <= 8": (1, 8, 2)}
STAGES = ("decode", "letterbox", "detector", "NMS", "crops", "classifier", "other")
# the functions of maskdet.faces timed, and their stage (detect_faces and Backend look them up at call time)
WRAPPED = {"letterbox": "letterbox", "decode_faces": "NMS", "merge_passes": "NMS", "crop_faces": "crops"}


def spread(items: list, n: int) -> list:
    "At most `n` of `items`, evenly spaced through them."
    return [items[i * len(items) // n] for i in range(n)] if len(items) > n else items


def face_groups(images: list[LabelledImage], per_group: int) -> dict[str, list[LabelledImage]]:
    "The scene photos of each face-count group of `GROUPS`."
    scenes = [image for image in images if image.kind == "scene"]
    return {
        name: spread([image for image in scenes if low <= len(image.boxes) <= high], per_group * share)
        for name, (low, high, share) in GROUPS.items()
    }


def jpeg(image: LabelledImage) -> bytes:
    "The photo as a JPEG file in memory (quality 90)."
    buffer = BytesIO()
    Image.fromarray(image.rgb()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def decode(data: bytes, bgr: bool) -> np.ndarray:
    "A JPEG decoded to an RGB uint8 array, or BGR (ultralytics' order)."
    rgb = np.asarray(Image.open(BytesIO(data)).convert("RGB"))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if bgr else rgb


@dataclass
class Variant:
    "One thing timed: `predict` on a decoded image; `passes` None for ultralytics' own one pass at 640."

    name: str
    passes: str | None
    predict: Callable
    bgr: bool = False
    detector: Detector | None = None


class StageClock:
    "Seconds spent in each stage of the maskdet model since `reset`."

    def __init__(self):
        self.seconds = {}

    def reset(self):
        self.seconds = {}

    def timed(self, stage: str, function: Callable) -> Callable:
        "`function`, its time added to `stage`."

        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

        return run

    @contextmanager
    def watching(self, models: list):
        "Time the stages of `models` (maskdet.faces' functions and each model's two networks) inside the block."
        originals = {name: getattr(maskdet.faces, name) for name in WRAPPED}
        for name, stage in WRAPPED.items():
            setattr(maskdet.faces, name, self.timed(stage, originals[name]))
        for model in models:
            model.detector_outputs = self.timed("detector", model.detector_outputs)
            model.probabilities = self.timed("classifier", model.probabilities)
        try:
            yield
        finally:
            for name, function in originals.items():
                setattr(maskdet.faces, name, function)
            for model in models:
                del model.detector_outputs, model.probabilities


def call(variant: Variant, data: bytes, clock: StageClock) -> dict[str, float]:
    "Milliseconds of decoding `data` and predicting on it: each stage timed, and the whole ('total')."
    clock.reset()
    start = time.perf_counter()
    image = decode(data, variant.bgr)
    decoded = time.perf_counter()
    variant.predict(image)
    end = time.perf_counter()
    seconds = {"decode": decoded - start, **clock.seconds, "total": end - start}
    return {stage: value * 1000 for stage, value in seconds.items()}


def measure(variants: list[Variant], photos: list[bytes], runs: int, clock: StageClock) -> list[list[dict]]:
    """The calls' times of each variant: `COMPILE_AFTER` untimed rounds over every photo, then `runs` rounds, each
    calling every variant in turn on the next photo, so that the machine's drift falls on all of them alike."""
    for _ in range(COMPILE_AFTER):
        for data in photos:
            for variant in variants:
                call(variant, data, clock)
    times = [[] for _ in variants]
    for i in range(runs):
        for variant, calls in zip(variants, times):
            calls.append(call(variant, photos[i % len(photos)], clock))
    return times


def summary(calls: list[dict]) -> dict:
    "Median and p90 of the calls' total milliseconds, and the median of each stage timed (the rest as 'other')."
    totals = [c["total"] for c in calls]
    timed = [stage for stage in STAGES if any(stage in c for c in calls)]
    stages = {stage: statistics.median(c.get(stage, 0.0) for c in calls) for stage in timed}
    other = [c["total"] - sum(c.get(stage, 0.0) for stage in timed) for c in calls]
    return {
        "median": statistics.median(totals),
        "p90": statistics.quantiles(totals, n=10, method="inclusive")[-1],
        "stages": stages | {"other": statistics.median(other)},
    }


def has_bf16() -> bool:
    "Whether OpenVINO can run bf16 on this CPU."
    import openvino

    return "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def model_files(models: Path, bf16: bool) -> dict[str, tuple[Path, str, str]]:
    "Each maskdet variant's model file, backend and precision."
    fp32, int8 = models / "openvino" / "fp32" / "model.xml", models / "openvino" / "int8" / "model.xml"
    files = {
        "maskdet torch .pt": (models / "best.pt", "torch", "f32"),
        "onnxruntime fp32": (models / "model.onnx", "onnxruntime", "f32"),
        "openvino fp32": (fp32, "openvino", "f32"),
        "openvino bf16": (fp32, "openvino", "bf16"),
        "openvino int8": (int8, "openvino", "f32"),
    }
    # the export stage keeps the INT8 model only when it is about as accurate as fp32 (export.int8_max_map_drop)
    kept = {name: spec for name, spec in files.items() if name != "openvino int8" or int8.is_file()}
    return {name: spec for name, spec in kept.items() if bf16 or name != "openvino bf16"}


def ultralytics_variant(paths) -> Variant:
    "ultralytics' own predict of the starting face detector at 640 px, on the torch threads last configured."
    from ultralytics import YOLO

    model = YOLO(paths.resolve(load_params("inputs", paths)["weights"]))
    return Variant(ULTRALYTICS, None, lambda image: model.predict(image, imgsz=640, verbose=False), bgr=True)


def maskdet_variants(files: dict, passes: list[str], threads: int) -> list[Variant]:
    "Every maskdet variant with every set of detector passes, on `threads` threads."
    variants = []
    for key in passes:
        for name, (path, backend, precision) in files.items():
            detector = Detector(path, backend, threads=threads, precision=precision)
            detector.config["detector_sizes"] = [int(size) for size in key.split(",")]
            variants.append(Variant(name, key, detector.predict, detector=detector))
    return variants


def test_map50(detector: Detector, test: list[LabelledImage]) -> float:
    "The detector's mAP50 on `test` (published labels), at the model's own thresholds."
    return summary_metrics(class_metrics(evaluate_model(detector.model, test), detector.thresholds))["mAP50"]


def with_ratios(rows: list[dict], first_passes: str) -> list[dict]:
    "The rows with the speed-up over ultralytics .pt predict and the cost against the first set of passes."
    ultralytics = {(r["group"], r["threads"]): r["median"] for r in rows if r["variant"] == ULTRALYTICS}
    baseline = {(r["group"], r["threads"], r["variant"]): r["median"] for r in rows if r["passes"] == first_passes}
    return [
        r
        | {
            "vs_ultralytics": ultralytics[r["group"], r["threads"]] / r["median"],
            "vs_passes": r["median"] / baseline[r["group"], r["threads"], r["variant"]] if r["passes"] else None,
        }
        for r in rows
    ]


def ratio(value: float | None) -> str:
    "A ratio as text, blank where there is none."
    return "" if value is None else f"{value:.2f}x"


def end_to_end_table(rows: list[dict], first_passes: str) -> str:
    "Markdown: end-to-end latency of each row."
    lines = [
        f"| photos | passes | threads | variant | median ms | p90 ms | vs ultralytics .pt | vs passes {first_passes} "
        "| test mAP50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        accuracy = "" if r["mAP50"] is None else f"{r['mAP50']:.4f}"
        lines.append(
            f"| {r['group']} | {r['passes'] or 'imgsz 640'} | {r['threads']} | {r['variant']} | {r['median']:.1f} | "
            f"{r['p90']:.1f} | {ratio(r['vs_ultralytics'])} | {ratio(r['vs_passes'])} | {accuracy} |"
        )
    return "\n".join(lines)


def stage_table(rows: list[dict]) -> str:
    "Markdown: median milliseconds of each stage of the maskdet rows."
    lines = [
        "| photos | passes | threads | variant | " + " | ".join(STAGES) + " | end to end |",
        "|---|---|---|---|" + "---|" * (len(STAGES) + 1),
    ]
    for r in rows:
        if r["variant"] != ULTRALYTICS:
            stages = " | ".join(f"{r['stages'][stage]:.1f}" for stage in STAGES)
            lines.append(
                f"| {r['group']} | {r['passes']} | {r['threads']} | {r['variant']} | {stages} | {r['median']:.1f} |"
            )
    return "\n".join(lines)


def header(groups: dict, runs: int, models: Path, bf16: bool) -> dict:
    "What was measured, where and when."
    served = find_model(models)
    return {
        "date": datetime.now().isoformat(timespec="minutes"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "runs": runs,
        "groups": {name: [len(image.boxes) for image in images] for name, images in groups.items()},
        "bf16": bf16,
        "served_model": f"{served} ({datetime.fromtimestamp(served.stat().st_mtime).isoformat(timespec='minutes')})",
    }


def describe(info: dict) -> str:
    "The header as text above the tables."
    groups = "; ".join(f"{name}: {len(faces)} photos" for name, faces in info["groups"].items())
    bf16 = "" if info["bf16"] else " openvino bf16 skipped: this CPU lacks bf16."
    if "int8" not in info["served_model"]:
        bf16 += " No INT8 model: the export stage dropped it (less accurate than fp32 beyond export.int8_max_map_drop)."
    return (
        f"maskdet latency per photo, end to end (JPEG decode + predict), {info['date']}, {info['machine']}; "
        f"real test photos ({groups}), {info['runs']} timed rounds per group, every variant in turn on each photo; "
        f"served model {info['served_model']}.{bf16} Test mAP50: the whole test split, published labels.\n"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed rounds per face-count group")
    parser.add_argument(
        "--passes", nargs="+", default=["640,256"], help="sets of detector sizes, the first the baseline"
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--images", type=int, default=10, help="photos per face-count group")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the test mAP50 of each variant")
    parser.add_argument("--json", type=Path, help="write the rows to this file")
    parser.add_argument("--models", type=Path, help="the folder of best.pt and the exported models (default: models/)")
    args = parser.parse_args()
    if args.runs < 2:
        parser.error("--runs must be at least 2 (a p90 needs two timings)")
    paths = setup_runtime()
    bf16 = has_bf16()
    files = model_files(args.models or paths.models, bf16)
    missing = sorted({str(path) for path, _, _ in files.values() if not path.is_file()})
    if missing:
        raise SystemExit(f"{', '.join(missing)} not found: run `dvc repro` first")
    test = load_split(paths.processed, "test", published=True)
    groups = face_groups(test, args.images)
    photos = {name: [jpeg(image) for image in images] for name, images in groups.items()}
    info = header(groups, args.runs, args.models or paths.models, bf16)
    print(describe(info))
    clock, rows, accuracy = StageClock(), [], {}
    for threads in args.threads:
        configure_ultralytics(paths, threads)
        variants = [ultralytics_variant(paths), *maskdet_variants(files, args.passes, threads)]
        models = [variant.detector.model for variant in variants if variant.detector]
        with clock.watching(models):
            for group, data in photos.items():
                for variant, calls in zip(variants, measure(variants, data, args.runs, clock)):
                    row = {"group": group, "photos": len(data), "passes": variant.passes, "threads": threads}
                    rows.append(row | {"variant": variant.name} | summary(calls))
        if threads == max(args.threads) and not args.no_accuracy:
            accuracy = {(v.name, v.passes): test_map50(v.detector, test) for v in variants if v.detector}
    rows = [r | {"mAP50": accuracy.get((r["variant"], r["passes"]))} for r in with_ratios(rows, args.passes[0])]
    print(end_to_end_table(rows, args.passes[0]) + "\n\nMedian ms per photo of each stage (maskdet variants):\n")
    print(stage_table(rows))
    if args.json:
        args.json.write_text(json.dumps(info | {"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
