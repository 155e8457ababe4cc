"""The runtime set-up keeps ultralytics offline and inside the project, on every core.

Each check runs a fresh interpreter (ultralytics reads its environment once, at import) under a
Python audit hook that records every network call and every file written outside the allowed folders,
with HOME and TMPDIR pointed at empty folders of the test's own, so that nothing can hide in
~/.config, ~/.cache or a shared /tmp (ultralytics falls back to /tmp/Ultralytics).

`maskdet log prune`, the runtime's upkeep of the prediction log, runs as a subprocess on a real SQLite log.
"""
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

import numpy as np
from conftest import BIN

AUDITED_PREDICT = textwrap.dedent(
    """
    import json, os, sys, tempfile
    allowed = tuple(os.path.realpath(p) + os.sep for p in (sys.argv[1], tempfile.gettempdir(), "/dev"))
    network, outside = [], []
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def written_path(event, args):
        if event == "open":
            path, mode, flags = args
            mode_writes = isinstance(mode, str) and any(c in mode for c in "wax+")
            writes = mode_writes or (mode is None and flags & WRITE_FLAGS)
            return path if writes else None
        if event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate"):
            return args[0]
        if event in ("os.rename", "shutil.copyfile", "shutil.copytree", "os.symlink", "os.link"):
            return args[1]
        return None

    def audit(event, args):
        if event.startswith("socket.") and event != "socket.__new__":
            network.append(f"{event} {args!r:.200}")
            return
        path = written_path(event, args)
        if isinstance(path, (str, bytes, os.PathLike)):
            real = os.path.realpath(os.fsdecode(path))
            if not (real + os.sep).startswith(allowed):
                outside.append(f"{event} {real}")

    sys.addaudithook(audit)
    from maskdet.core import cpu_threads, setup_runtime
    setup_runtime()
    import torch
    from ultralytics import YOLO
    results = YOLO(sys.argv[2]).predict(sys.argv[3], verbose=False)
    print(json.dumps({"faces": len(results[0].boxes), "network": network, "outside": outside,
                      "threads": torch.get_num_threads(), "expected_threads": cpu_threads()}))
    """
)


def run_audited_predict(project, weights, image, home, tmp):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "YOLO_", "MLFLOW_", "MPL", "TORCH_"))}
    env |= {"HOME": str(home), "TMPDIR": str(tmp), "PYTHONDONTWRITEBYTECODE": "1", "MASKDET_ROOT": str(project.root)}
    done = subprocess.run([sys.executable, "-c", AUDITED_PREDICT, str(project.root), str(weights), str(image)],
                          capture_output=True, text=True, env=env, cwd=project.root, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_predict_is_offline_inside_the_project_and_on_every_core(project, inputs, tmp_path):
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    image = inputs["dataset"] / "images" / "maksssksksss0.png"
    report = run_audited_predict(project, inputs["weights"], image, home, tmp)
    assert report["faces"] >= 1, "the face detector found no face in a street photo"
    assert report["network"] == [], "network lookups made"
    assert report["outside"] == [], "files written outside the project and the temp dir"
    assert list(home.iterdir()) == [], "files written into HOME"
    assert report["threads"] == report["expected_threads"]
    assert (project.cache / "Ultralytics" / "Arial.ttf").is_file()
    settings = json.loads((project.cache / "Ultralytics" / "settings.json").read_text())
    assert settings["sync"] is False and settings["runs_dir"] == str(project.runs)


def prune_command(project, log_file, *args, retention=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASKDET_", "YOLO_", "MLFLOW_"))}
    env |= {"MASKDET_PREDICTION_LOG": str(log_file), "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}
    if retention is not None:
        env["MASKDET_LOG_RETENTION_DAYS"] = str(retention)
    return subprocess.run([str(BIN / "maskdet"), "log", "prune", *args], capture_output=True, text=True, env=env,
                          cwd=project.root, timeout=120)


def test_log_prune_deletes_the_old_rows_and_their_images(project, inputs, tmp_path):
    from PIL import Image

    from maskdet.detections import Detections
    from maskdet.predictions import PredictionLog, log_time

    photo = np.asarray(Image.open(inputs["dataset"] / "images" / "maksssksksss0.png").convert("RGB"))
    log_file = tmp_path / "predictions.db"
    log = PredictionLog(log_file)
    for _ in range(8):
        log.record(photo, Detections.empty(), 20.0, source="entrance", store_image=True)
    now = datetime.now(UTC)
    with sqlite3.connect(log_file) as db:  # rows 1-3 from 40 days ago, 4-5 from 10 days ago, 6-8 from now
        for ids, age in (((1, 2, 3), 40), ((4, 5), 10)):
            older = log_time(now - timedelta(days=age))
            db.executemany("UPDATE predictions SET time = ? WHERE id = ?", [(older, i) for i in ids])

    done = prune_command(project, log_file)  # the retention setting's default: 30 days
    assert done.returncode == 0 and done.stdout.strip() == f"{log_file}: deleted 3 rows older than 30 days", done.stderr
    with sqlite3.connect(log_file) as db:
        kept = db.execute("SELECT id FROM predictions WHERE image IS NOT NULL ORDER BY id").fetchall()
    assert [row[0] for row in kept] == [4, 5, 6, 7, 8]
    done = prune_command(project, log_file, retention=7)
    assert done.returncode == 0 and "deleted 2 rows older than 7 days" in done.stdout, done.stderr
    done = prune_command(project, log_file, "--days", "0")
    assert done.returncode == 0 and "kept whole" in done.stdout and len(log) == 3
    assert log.image(6) is not None and log.image(4) is None


def test_log_prune_of_no_log_or_not_a_log(project, tmp_path):
    missing = prune_command(project, tmp_path / "none.db")
    assert missing.returncode == 0 and "no prediction log at" in missing.stdout and not (tmp_path / "none.db").exists()
    (tmp_path / "photo.db").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(4096))
    done = prune_command(project, tmp_path / "photo.db", "--days", "1")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("maskdet log: prediction log"), done.stderr
    assert prune_command(project, tmp_path / "photo.db", "--days", "-1").returncode == 2
