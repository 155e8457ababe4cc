"""Calibration of the drift decision on real images: false alerts, detection of five shifts, smallest windows.

Reference: the project's reference images (params.yaml drift.reference_splits: train + val of data/processed).
Windows: drawn with replacement from the test split (115 images never in the reference, from scenes never in
it: the split keeps similar scenes together), as they are or shifted: brightness -40 %, Gaussian blur
sigma 3, JPEG quality 10, Gaussian noise sigma 25 grey levels, grey. Every window is decided by
`maskdet.drift.drift_decision` with params.yaml's drift section (evidently's Report + DataDriftPreset,
exactly as `maskdet drift` decides), with min_window lifted so that small windows are decided too.
Image statistics only (model-free) unless --with-model, which adds the served model's prediction features.
Per-image features of the test images and their shifted copies are cached in .cache/drift/.

    .venv/bin/python benchmarks/drift.py [--trials 20] [--sizes 10 20 30 50 100] [--with-model]
                                         [--threshold P] [--drift-share S]

Prints a markdown table; exits 1 when a target is missed (false alerts <= 5 % and every shift detected in
>= 95 % of the windows of 100 images).
"""
import argparse
import io
import time

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from maskdet.core import load_params, setup_runtime
from maskdet.drift import (
    cached_features,
    drift_decision,
    features_key,
    image_features,
    load_features,
    manifest_images,
    reference_features,
    save_features,
)
from maskdet.readers import load_rgb


def jpeg(rgb, quality=10):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def noisy(rgb, seed, sigma=25.0):
    return np.clip(rgb + np.random.default_rng(seed).normal(0, sigma, rgb.shape), 0, 255).astype(np.uint8)


SHIFTS = {
    "brightness -40 %": lambda rgb, seed: (rgb * 0.6).round().astype(np.uint8),
    "blur sigma 3": lambda rgb, seed: cv2.GaussianBlur(rgb, (0, 0), 3),
    "JPEG quality 10": lambda rgb, seed: jpeg(rgb, 10),
    "noise sigma 25": noisy,
    "grey": lambda rgb, seed: np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2),
}


def shifted_features(files, shift, detector, cache):
    """Features of `files` shifted by SHIFTS[shift], cached under `cache`."""
    slug = "".join(c if c.isalnum() else "-" for c in shift)
    path = cache / f"bench-{slug}-{features_key(files, detector)}.csv"
    if path.is_file():
        return load_features(path)
    rows = []
    for seed, file in enumerate(files):
        rgb = SHIFTS[shift](np.asarray(load_rgb(file)), seed)
        rows.append({"image": file.name, **image_features(rgb, None if detector is None else detector.predict(rgb))})
    frame = pd.DataFrame(rows)
    save_features(frame, path)
    return frame


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 30, 50, 100])
    parser.add_argument("--with-model", action="store_true", help="add the prediction features of the model in models/")
    parser.add_argument("--threshold", type=float, help="per-column threshold (default: params.yaml drift.threshold)")
    parser.add_argument("--drift-share", type=float,
                        help="share of drifted columns (default: params.yaml drift.drift_share)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    paths = setup_runtime(with_ultralytics=False)
    params = load_params("drift", paths)
    params |= {"min_window": 1, "threshold": args.threshold or params["threshold"],
               "drift_share": args.drift_share or params["drift_share"]}
    detector = None
    if args.with_model:
        from maskdet.inference import Detector
        detector = Detector(paths.models)
    started = time.perf_counter()
    reference = reference_features(paths, params, detector)
    test_files = manifest_images(paths.processed, ["test"])
    pools = {"same distribution": cached_features(test_files, detector, paths.cache / "drift", "bench-test")}
    pools |= {shift: shifted_features(test_files, shift, detector, paths.cache / "drift") for shift in SHIFTS}
    features_s = time.perf_counter() - started

    rng = np.random.default_rng(args.seed)
    draws = {size: [rng.choice(len(test_files), size, replace=True) for _ in range(args.trials)]
             for size in args.sizes}
    rates, named, decided = {}, {}, 0
    started = time.perf_counter()
    for condition, pool in pools.items():
        for size in args.sizes:
            windows = [pool.iloc[rows].reset_index(drop=True) for rows in draws[size]]
            results = [drift_decision(reference, window, params) for window in windows]
            decided += len(results)
            rates[condition, size] = np.mean([r.drift for r in results])
            if size == max(args.sizes):
                counts = pd.Series([c for r in results for c in r.drifted_columns]).value_counts()
                named[condition] = ", ".join(f"{c} {n / len(results):.0%}" for c, n in counts.items()) or "-"
    decide_s = time.perf_counter() - started

    largest = max(args.sizes)
    rows = []
    for condition in pools:
        by_size = {n: rates[condition, n] for n in args.sizes}
        good = (lambda r: r <= 0.05) if condition == "same distribution" else (lambda r: r >= 0.95)
        passing = [n for n in args.sizes if all(good(by_size[m]) for m in args.sizes if m >= n)]
        target = "<= 5 % alerts" if condition == "same distribution" else ">= 95 % detected"
        rows.append({"window": condition, "target": target,
                     **{f"alerts n={n}": f"{by_size[n]:.0%}" for n in args.sizes},
                     "smallest window on target": min(passing) if passing else "none",
                     f"columns drifted at n={largest} (share of windows)": named[condition]})
    table = pd.DataFrame(rows)
    features = "image statistics only"
    if detector:
        features = f"image statistics + predictions of {detector.path.relative_to(paths.root)}"
    print(f"reference: {len(reference)} images ({'+'.join(params['reference_splits'])}); windows drawn with "
          f"replacement from {len(test_files)} test images; {args.trials} trials per cell; features: {features}")
    print(f"decision: evidently {params['method']} per column, threshold {params['threshold']:g}, "
          f"drift when >= {params['drift_share']:g} of the columns drift")
    print("targets: same distribution <= 5 % alerts, each shift >= 95 % detected (smallest window: every size "
          "from it up meets the target)\n")
    print(table.to_markdown(index=False))
    print(f"\nfeatures {features_s:.0f} s (cached after the first run), {decided} decisions {decide_s:.0f} s "
          f"({decide_s / decided * 1000:.0f} ms each)")
    missed = rates["same distribution", largest] > 0.05 or any(rates[s, largest] < 0.95 for s in SHIFTS)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
