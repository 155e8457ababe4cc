"""Drift monitoring as its users meet it: `drift_check`, `maskdet drift` and the drift stage on real photos.

A small project is made in a temporary folder (a clean clone has no prepared data and no model): 300 real
photos of the data set, prepared and split as the pipeline does, are the reference (train + val); windows
are other real photos of the data set, as they are or darkened/blurred. Alerts go to a real HTTP receiver
on a free 127.0.0.1 port, one that fails before it takes them, or no receiver at all (a malformed URL, a closed
port, a timeout); the command runs as a subprocess.
"""
import json
import os
import shutil
import sqlite3
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import BIN
from PIL import Image

from maskdet import monitoring
from maskdet.core import ModelError, ProjectPaths, Settings, load_params
from maskdet.detections import Detections
from maskdet.drift import FEATURE_COLUMNS
from maskdet.launch import free_port
from maskdet.monitoring import WEBHOOK_ATTEMPTS, drift_check, post_webhook, served_detector
from maskdet.predictions import PredictionLog
from maskdet.prepare import prepare_dataset
from maskdet.readers import load_rgb, sample_voc
from maskdet.stages import stage_sections

SHIFTS = {"dark": lambda rgb: (rgb * 0.6).astype(np.uint8), "blurred": lambda rgb: cv2.GaussianBlur(rgb, (0, 0), 3)}


def write_images(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for name, rgb in images:
        Image.fromarray(rgb).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def site(project, inputs, tmp_path_factory):
    """A project folder with a prepared reference, the stage notebook, and folders of unseen real photos."""
    root = tmp_path_factory.mktemp("site")
    shutil.copy(project.params, root / "params.yaml")
    (root / "nbs" / "pipeline").mkdir(parents=True)
    shutil.copy(project.root / "nbs" / "pipeline" / "drift.ipynb", root / "nbs" / "pipeline")
    paths = ProjectPaths(root)
    sample = sample_voc(inputs["dataset"], tmp_path_factory.mktemp("voc"), 300)
    prepare_dataset(sample, paths.processed, load_params("prepare", project))
    used = {p.stem for p in (sample / "images").iterdir()}
    unseen = [p for p in sorted((inputs["dataset"] / "images").iterdir()) if p.stem not in used][:100]
    photos = [(p.name, np.asarray(load_rgb(p))) for p in unseen]
    windows = {"clean": write_images(root / "windows" / "clean", photos[:60]),
               "small": write_images(root / "windows" / "small", photos[:10]),
               "empty": write_images(root / "windows" / "empty", [])}
    for name, shift in SHIFTS.items():
        windows[name] = write_images(root / "windows" / name, [(n, shift(x)) for n, x in photos[:60]])
    return paths, windows, photos


def check(site, tmp_path, **options):
    paths, windows, _ = site
    settings = options.pop("settings", Settings(prediction_log=str(tmp_path / "predictions.db")))
    detector = options.pop("detector", None)
    return drift_check(paths, load_params("drift", paths), settings=settings, detector=detector, **options)


def test_a_clean_window_raises_no_alert(site, tmp_path):
    paths, windows, _ = site
    result = check(site, tmp_path, current=windows["clean"])
    assert result.status == "no drift" and not result.drift and result.alerts == []
    assert result.drifted_columns == [] and len(result.columns) == 8  # no model: image statistics only
    assert result.window["images"] == 60 and result.window["reference_images"] > 200
    assert not (paths.reports / "drift" / "alert.json").exists()
    assert json.loads((paths.reports / "drift.json").read_text())["status"] == "no drift"
    assert (paths.reports / "drift" / "report.html").stat().st_size > 100_000


@pytest.mark.parametrize("shift, moved, unmoved", [("dark", {"brightness", "contrast"}, set()),
                                                   ("blurred", {"sharpness", "noise"}, {"brightness"})])
def test_a_shifted_window_alerts_naming_the_features(site, tmp_path, caplog, shift, moved, unmoved):
    paths, windows, _ = site
    with caplog.at_level("WARNING", logger="maskdet.monitoring"):
        result = check(site, tmp_path, current=windows[shift])
    assert result.status == "drift" and result.message.startswith("drift:")
    assert moved <= set(result.drifted_columns) and not unmoved & set(result.drifted_columns)
    alerts = json.loads((paths.reports / "drift" / "alert.json").read_text())
    assert [a["kind"] for a in alerts] == ["drift"] and alerts[0]["drifted_columns"] == result.drifted_columns
    logged = [r for r in caplog.records if getattr(r, "event", None) == "drift_alert"]
    assert len(logged) == 1 and logged[0].drifted_columns == result.drifted_columns
    assert json.loads((paths.reports / "drift.json").read_text())["alerts"] == ["drift"]


@pytest.mark.parametrize("window, n", [("small", 10), ("empty", 0)])
def test_too_small_a_window_is_not_enough_data_and_no_alert(site, tmp_path, window, n):
    paths, windows, _ = site
    result = check(site, tmp_path, current=windows[window])
    assert result.status == "not enough data" and result.alerts == [] and not result.drift
    assert result.message == f"not enough data ({n} < 30 images): no drift decision"
    assert not (paths.reports / "drift" / "alert.json").exists()
    assert not (paths.reports / "drift" / "report.html").exists()


def test_a_missing_log_is_an_empty_window(site, tmp_path):
    result = check(site, tmp_path)
    assert result.status == "not enough data" and result.window["images"] == 0
    assert not (tmp_path / "predictions.db").exists()


def test_corrupt_log_rows_are_skipped_and_counted(site, tmp_path):
    _, _, photos = site
    log = PredictionLog(tmp_path / "predictions.db")
    for _, rgb in photos[:40]:
        log.record(rgb, Detections.empty(), 20.0, source="test")
    with sqlite3.connect(log.path) as db:
        now = pd.Timestamp.now(tz="UTC").isoformat()
        db.execute("INSERT INTO predictions (time, detections) VALUES (?, 'not json')", (now,))
        db.execute("INSERT INTO predictions (time, detections) VALUES (?, '[{\"no label\": 1}]')", (now,))
        db.execute("UPDATE predictions SET sharpness = 'blurry' WHERE id = 5")
    result = check(site, tmp_path, since="1h")
    assert (result.status, result.window["images"], result.window["skipped"]) == ("no drift", 39, 3)
    assert "since" in result.window and "prediction log" in result.window["source"]


SECRET = "hook-secret-5d1e"  # webhook URLs carry their secret: it must not reach a log line or a file


class Answering(BaseHTTPRequestHandler):
    """Answers each POST with the next status of `statuses` (the last one repeats), keeping the path and body of those
    it takes; while `hold` is not set, keeps the POST waiting instead."""
    statuses, received, posts, hold = [200], [], 0, None

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        status = cls.statuses[min(cls.posts, len(cls.statuses) - 1)]
        cls.posts += 1
        if cls.hold is not None:
            cls.hold.wait(30)
        if status < 300:
            cls.received.append((self.path, body))
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextmanager
def receiver(statuses, hold=None):
    """A real HTTP receiver on a free 127.0.0.1 port answering `statuses` in turn; yields its hook URL."""
    Answering.statuses, Answering.received, Answering.posts, Answering.hold = statuses, [], 0, hold
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answering)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/{SECRET}"
    finally:
        if hold is not None:
            hold.set()
        server.shutdown()
        server.server_close()


def nothing_secret(caplog, paths):
    """No log record (message or fields) and no file under reports/ holds the webhook's secret."""
    assert not [r for r in caplog.records if SECRET in repr(vars(r))]
    assert not [f for f in paths.reports.rglob("*") if f.is_file() and SECRET.encode() in f.read_bytes()]


def test_the_alert_is_posted_to_the_webhook(site, tmp_path):
    paths, windows, _ = site
    with receiver([200]) as url:
        result = check(site, tmp_path, current=windows["dark"],
                       settings=Settings(prediction_log=str(tmp_path / "predictions.db"), webhook_url=url))
    assert result.alerts[0]["webhook"] == "sent (HTTP 200)"
    path, alert = Answering.received[-1]
    assert path == f"/hooks/{SECRET}" and alert["kind"] == "drift" and "brightness" in alert["drifted_columns"]
    assert alert["window"]["images"] == 60 and alert["report"].endswith("report.html")


def test_a_webhook_failing_twice_gets_the_alert_once(site, tmp_path, caplog):
    paths, windows, _ = site
    with receiver([503, 503, 200]) as url, caplog.at_level("INFO", logger="maskdet"):
        result = check(site, tmp_path, current=windows["dark"],
                       settings=Settings(prediction_log=str(tmp_path / "predictions.db"), webhook_url=url))
    assert Answering.posts == 3 and [alert["kind"] for _, alert in Answering.received] == ["drift"]
    assert result.alerts[0]["webhook"] == "sent (HTTP 200) after 3 attempts"
    decision = json.loads((paths.reports / "drift.json").read_text())
    assert decision["webhook"] == {"drift": "sent (HTTP 200) after 3 attempts"}
    assert json.loads((paths.reports / "drift" / "alert.json").read_text())[0]["webhook"].startswith("sent")
    assert "drift webhook: try 2 failed (HTTP 503), trying again" in caplog.text
    nothing_secret(caplog, paths)


@pytest.mark.parametrize("url, outcome", [
    (f"http://[::1/hooks/{SECRET}", "failed: malformed URL"),
    (f"hooks.example.org/{SECRET}", "failed: malformed URL"),
    ("unreachable", f"failed after {WEBHOOK_ATTEMPTS} attempts: ConnectionRefusedError"),
])
def test_a_webhook_that_cannot_be_reached_loses_no_decision_and_tells_no_secret(site, tmp_path, caplog, url, outcome):
    paths, windows, _ = site
    (paths.reports / "drift.json").unlink(missing_ok=True)
    url = f"http://127.0.0.1:{free_port()}/hooks/{SECRET}" if url == "unreachable" else url
    with caplog.at_level("INFO", logger="maskdet"):
        result = check(site, tmp_path, current=windows["dark"],
                       settings=Settings(prediction_log=str(tmp_path / "predictions.db"), webhook_url=url))
    decision = json.loads((paths.reports / "drift.json").read_text())
    assert result.status == decision["status"] == "drift" and decision["webhook"] == {"drift": outcome}
    assert f"drift webhook {outcome}" in caplog.text
    nothing_secret(caplog, paths)


def test_a_webhook_answering_errors_or_nothing_is_retried_as_they_deserve(monkeypatch, caplog):
    alert = {"kind": "drift", "message": "drift: test"}
    with caplog.at_level("INFO", logger="maskdet"):
        with receiver([503]) as url:
            assert post_webhook(url, alert) == f"failed after {WEBHOOK_ATTEMPTS} attempts: HTTP 503"
        assert Answering.posts == WEBHOOK_ATTEMPTS
        with receiver([404]) as url:
            assert post_webhook(url, alert) == "failed: HTTP 404"  # a client error: trying again cannot help
        assert Answering.posts == 1
        monkeypatch.setattr(monitoring, "WEBHOOK_TIMEOUT_S", 0.5)
        with receiver([200], hold=threading.Event()) as url:
            assert post_webhook(url, alert) == f"failed after {WEBHOOK_ATTEMPTS} attempts: TimeoutError"
    assert not [r for r in caplog.records if SECRET in repr(vars(r))]


def test_prediction_features_and_compliance_with_a_model(site, inputs, tmp_path):
    """A model made from the starting face detector (real faces; an untrained classifier, so labels mean nothing)."""
    from maskdet.inference import Detector, export_onnx
    from maskdet.model import MaskClassifier, default_config, save_checkpoint

    paths, windows, _ = site
    weights = inputs["weights"]
    config = default_config(load_params("model", paths) | {"detector_sizes": [320]})  # one 320 px pass: faster
    checkpoint = save_checkpoint(weights, MaskClassifier.from_yolo(weights), config, tmp_path / "model" / "best.pt")
    detector = Detector(export_onnx(checkpoint, tmp_path / "model"))
    result = check(site, tmp_path, current=windows["clean"], detector=detector)
    assert result.status == "no drift" and set(result.columns.index) == set(FEATURE_COLUMNS)
    assert result.current.faces.sum() > 60 and 0 < result.current.face_size.median() < 0.5
    assert result.compliance["status"] == "ok" and result.compliance["faces"] == result.current.faces.sum()
    assert result.window["model_version"] == detector.version


def test_no_model_means_image_statistics_only_but_a_broken_one_is_an_error(site, tmp_path):
    paths = site[0]
    params = load_params("drift", paths)
    assert served_detector(Settings(model=str(tmp_path / "no-such-model")), params, paths) is None
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="model.onnx is not an ONNX model"):
        served_detector(Settings(model=str(tmp_path / "model.onnx")), params, paths)


def maskdet(site, *args):
    paths = site[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASKDET_", "MLFLOW_", "YOLO_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    import subprocess
    return subprocess.run([str(BIN / "maskdet"), "drift", *map(str, args)], cwd=paths.root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_command_exit_codes(site):
    _, windows, _ = site
    clean = maskdet(site, "--current", windows["clean"], "--fail-on-drift")
    assert clean.returncode == 0 and clean.stdout.startswith("no drift:"), clean.stderr[-2000:]
    drifted = maskdet(site, "--current", windows["dark"], "--fail-on-drift")
    assert drifted.returncode == 1 and drifted.stdout.startswith("drift:") and "brightness" in drifted.stdout
    assert '"event": "drift_alert"' in drifted.stderr  # the structured log line (JSON)
    assert maskdet(site, "--current", windows["dark"]).returncode == 0  # without --fail-on-drift
    small = maskdet(site, "--current", windows["small"], "--fail-on-drift")
    assert small.returncode == 0 and "not enough data (10 < 30 images)" in small.stdout
    bad_calls = ((["--current", windows["clean"] / "nothing"], "not a folder"), (["--since", "yesterday"], "ISO time"))
    for bad, says in bad_calls:
        done = maskdet(site, *bad)
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr


def test_the_stage_reads_the_log_and_renders_its_notebook(site):
    paths, _, photos = site
    empty = maskdet(site, "--fail-on-drift")
    assert empty.returncode == 0 and "not enough data (0 < 30 images)" in empty.stdout, empty.stderr[-2000:]
    log = PredictionLog(paths.logs / "predictions.db")
    for _, rgb in photos[:40]:
        log.record(SHIFTS["dark"](rgb), Detections.empty(), 20.0, source="entrance")
    done = maskdet(site, "--fail-on-drift")
    assert done.returncode == 1 and "brightness" in done.stdout, done.stderr[-2000:]
    notebook = json.loads((paths.reports / "drift.ipynb").read_text())
    tags = [cell.get("metadata", {}).get("tags", []) for cell in notebook["cells"]]
    assert ["injected-parameters"] in tags
    outputs = [o for cell in notebook["cells"] for o in cell.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
    assert not any(o.get("output_type") == "error" for o in outputs)
    assert (paths.logs / "drift.jsonl").is_file()


def test_drift_is_its_own_job_and_not_a_stage_of_the_training_pipeline(project):
    """It reads the live prediction log, which changes all the time: as a DVC stage it would rerun on every
    `dvc repro` and `dvc status` would never be clean."""
    assert "drift" not in yaml.safe_load((project.root / "dvc.yaml").read_text())["stages"]
    assert stage_sections("drift", project) == ["drift"]
