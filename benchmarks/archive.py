"""Archive inference throughput, in one run on the same real photos: the plain `maskdet predict` loop (one process)
against `maskdet predict --ray` (a local Ray cluster started by the command, Parquet out) with 1 actor of 2 threads
and 2 actors of 1 thread. End to end, as a user waits for it: start-up, model loading and writing included.

    .venv/bin/python benchmarks/archive.py --images 1000 --runs 1

Prints images/s of each variant and its ratio to the plain loop; --json keeps the rows.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from maskdet.core import IMAGE_SUFFIXES, project_paths
from maskdet.sources import configured_sources

BIN = Path(sys.executable).parent


def photos(count: int) -> list[Path]:
    source = configured_sources(project_paths())[0].path
    return sorted(p for p in (source / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]


def variants(folder: Path, out: Path, model: str) -> dict[str, list]:
    ray = [BIN / "maskdet", "predict", "--ray", folder, "--out", out, "--model", model]
    return {"plain maskdet predict": [BIN / "maskdet", "predict", folder, "--json", "--model", model],
            "Ray, 1 actor x 2 threads": [*ray, "--workers", "1", "--threads", "2"],
            "Ray, 2 actors x 1 thread": [*ray, "--workers", "2", "--threads", "1"]}


def seconds(command: list, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)  # every run predicts everything
    start = time.perf_counter()
    subprocess.run([str(c) for c in command], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="real photos of the data set (at most all of them)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each variant; the median is reported")
    parser.add_argument("--model", default="models")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "photos", Path(tmp) / "results.parquet"
        folder.mkdir()
        files = photos(args.images)
        for photo in files:
            shutil.copy(photo, folder / photo.name)
        times = {name: [seconds(command, out) for _ in range(args.runs)]
                 for name, command in variants(folder, out, args.model).items()}
    plain = statistics.median(next(iter(times.values())))
    medians = {name: statistics.median(t) for name, t in times.items()}
    rows = [{"variant": name, "images": len(files), "median_s": round(median, 1),
             "images_per_s": round(len(files) / median, 2), "vs_plain": round(plain / median, 2)}
            for name, median in medians.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
    print(f"| variant ({len(files)} photos, {args.runs} run(s)) | seconds | images/s | vs plain |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['median_s']} | {row['images_per_s']} | {row['vs_plain']}x |")


if __name__ == "__main__":
    main()
