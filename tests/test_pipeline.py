"""The whole pipeline as a user runs it: `dvc repro` from prepare to register in a fresh copy of the
project, on 60 real photos with short trainings, then the promotion gate refusing a second version.

Real DVC, papermill, ultralytics training, MLflow tracking and registry; only the sizes are small.
"""

import json
import re
from pathlib import Path

import mlflow
import pytest
from conftest import BIN, copy_project, run, set_params

from maskdet.core import CLASSES
from maskdet.readers import sample_voc
from maskdet.registry import model_path

QUICK = {
    "model.detector_sizes": [320, 160],
    "train.detector.epochs": 1,
    "train.detector.imgsz": 320,
    "train.detector.batch": 8,
    "train.closeup_detector.epochs": 1,
    "train.closeup_detector.imgsz": 160,
    "train.classifier.epochs": 2,
    "train.calibration_images": 10,
    "evaluate.latency_runs": 3,
    "evaluate.closeup_min_face": 20,
    "evaluate.bootstrap_resamples": 100,
    "export.int8_calibration_images": 20,
    "export.latency_runs": 3,
}


@pytest.fixture(scope="module")
def pipeline(project, inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    dataset = sample_voc(inputs["dataset"], tmp_path_factory.mktemp("data") / "voc", 60)
    weights = str(inputs["weights"])
    where = {"inputs.root": str(dataset.parent), "inputs.sources": [{"name": "sample", "path": dataset.name}],
             "inputs.weights": weights}
    copy = copy_project(project, root, QUICK | where)
    done = run([BIN / "dvc", "repro"], copy)
    return copy, done


def test_repro_runs_every_stage_and_writes_the_metrics(pipeline):
    copy, done = pipeline
    for stage in ("prepare", "train", "evaluate", "register", "export"):
        assert f"Running stage '{stage}'" in done.stdout
    # the stages say what they do while they run: each classifier epoch of the 2 x (3 members + the student)
    epochs = re.findall(r"classifier epoch (\d+)/8: loss", done.stdout + done.stderr)
    assert epochs == [str(n) for n in range(1, 9)], epochs
    # ... and each epoch of the two detectors ultralytics fine-tunes (quietly: verbose=False)
    for detector in ("face detector", "close-up detector"):
        assert re.search(rf"{detector} epoch 1/1: val face mAP50 \d\.\d{{4}}", done.stdout + done.stderr), detector
    metrics = json.loads((copy / "reports" / "metrics.json").read_text())
    assert {"mAP50", "mAP50_95", "mAP50_top1", "precision", "recall", "per_class"} <= set(metrics)
    assert set(metrics["per_class"]) == set(CLASSES)
    keys = {"ap50", "ap50_top1", "precision", "recall", "threshold"}
    assert all(keys <= set(m) for m in metrics["per_class"].values())
    assert 0 < metrics["mAP50"] <= 1 and metrics["latency_ms"]["median_ms"] > 0
    # none of the faces in data/label_corrections.csv is among these 60 photos: both label sets agree
    reviewed = metrics["reviewed_labels"]
    assert metrics["labels"] == "published" and reviewed["faces_relabelled"] == 0
    assert reviewed["mAP50"] == metrics["mAP50"] and set(reviewed["per_class"]) == set(CLASSES)
    low, high = metrics["intervals"]["mAP50"]
    assert 0 <= low <= high <= 1 and set(metrics["intervals"]) == {"mAP50", *CLASSES}
    assert set(metrics["by_face_size"]) == {"<16", "16-32", "32-64", "64-128", ">128"}
    closeup = metrics["closeup"]
    assert {"all", "frame 240x240", "frame 640x480"} <= set(closeup) and closeup["all"]["frames"] > 0
    assert 0 <= closeup["all"]["found"] <= 1 and list(metrics["per_source"]) == ["sample"]
    assert (copy / "models" / "best.pt").is_file()
    for plot in ("pr_curve.csv", "f1_curve.csv", "confusion.csv"):
        assert (copy / "reports" / "plots" / plot).stat().st_size > 0
    for stage in ("prepare", "train", "evaluate", "register", "export"):
        cells = json.loads((copy / "reports" / f"{stage}.ipynb").read_text())["cells"]
        tags = [cell.get("metadata", {}).get("tags", []) for cell in cells]
        where = {tag: i for i, cell_tags in enumerate(tags) for tag in cell_tags}
        assert where["injected-parameters"] == where["parameters"] + 1, f"papermill did not parameterise {stage}"
    shown = run([BIN / "dvc", "metrics", "show", "--json"], copy).stdout
    assert "mAP50" in shown
    again = run([BIN / "dvc", "repro"], copy)
    assert re.findall(r"Running stage '(\w+)'", again.stdout) == []
    assert again.stdout.count("didn't change, skipping") == 5
    assert "up to date" in run([BIN / "dvc", "status"], copy).stdout
    # the metrics are git's: the copy's last commit holds the project's own (the whole data set), the
    # workspace those of this small run, and `dvc metrics diff` tells them apart
    diff = json.loads(run([BIN / "dvc", "metrics", "diff", "--json"], copy).stdout)
    changed = diff["reports/metrics.json"]["mAP50"]
    assert changed["old"] != changed["new"] and round(changed["new"], 4) == round(metrics["mAP50"], 4), changed
    # drift is its own job, not a stage: it reads the live prediction log (here none yet)
    run([BIN / "maskdet", "drift"], copy)
    drift = json.loads((copy / "reports" / "drift.json").read_text())
    assert drift["status"] == "not enough data" and not drift["drift"] and drift["alerts"] == []


def test_one_training_is_one_mlflow_run_with_everything(pipeline):
    copy, _ = pipeline
    record = json.loads((copy / "models" / "train_run.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{copy / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("maskdet").experiment_id])
    parents = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") for r in runs}
    assert [run_id for run_id, parent in parents.items() if parent is None] == [record["run_id"]]
    # the close-up detector's run, nested
    assert [parent for parent in parents.values() if parent] == [record["run_id"]]
    run_ = client.get_run(record["run_id"])
    assert run_.data.tags["data.version"] == record["data_version"] != ""
    assert run_.data.tags["git.commit"] not in ("", "unknown")
    assert "maskdet.train.classifier.lr" in run_.data.params
    assert {"classifier/loss", "val/mAP50", "test/mAP50"} <= set(run_.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {"best.pt", "dataset.yaml", "metrics.json"} <= artifacts


def test_registry_gate_keeps_the_champion_when_a_version_fails(pipeline):
    copy, _ = pipeline
    first = json.loads((copy / "reports" / "registry.json").read_text())
    assert (first["version"], first["promoted"]) == (1, True)
    set_params(copy, {"register.max_class_drop": -1.0})  # no version can pass: every class would have to gain 1.0
    again = run([BIN / "dvc", "repro"], copy)
    assert "Running stage 'register'" in again.stdout and "Running stage 'train'" not in again.stdout
    second = json.loads((copy / "reports" / "registry.json").read_text())
    assert (second["version"], second["promoted"], second["champion"]) == (2, False, 1)
    assert second["champion_rescored"] and "scored again on the same test split" in second["reason"]
    client = mlflow.MlflowClient(f"sqlite:///{copy / 'mlruns' / 'mlflow.db'}")
    assert int(client.get_model_version_by_alias("maskdet", "champion").version) == 1
    assert int(client.get_model_version_by_alias("maskdet", "challenger").version) == 2
    # each version holds the served files (export ran first), loadable without torch
    mlflow.set_tracking_uri(f"sqlite:///{copy / 'mlruns' / 'mlflow.db'}")
    try:
        served = {path.name for path in model_path("models:/maskdet@champion").iterdir()}
    finally:
        mlflow.set_tracking_uri(None)
    assert {"best.pt", "model.json", "model.onnx", "closeup.onnx", "classifier.onnx", "openvino"} <= served


def test_tune_compares_trials_in_mlflow(pipeline):
    copy, _ = pipeline
    set_params(copy, {"tune.space": {"lr": [0.001, 0.004], "epochs": [1]}})
    done = run([BIN / "maskdet", "tune", "--trials", "2"], copy)
    table = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 4 and "val_mAP50" in table[0], done.stdout  # header, rule, two trials
    client = mlflow.MlflowClient(f"sqlite:///{copy / 'mlruns' / 'mlflow.db'}")
    trials = client.search_runs([client.get_experiment_by_name("maskdet-tune").experiment_id])
    assert len(trials) == 2 and all("val/mAP50" in t.data.metrics for t in trials)


def test_predict_on_real_photos_with_the_exported_model(pipeline, inputs, tmp_path):
    copy, _ = pipeline
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("maksssksksss0.png", "maksssksksss1.png"):
        (folder / name).write_bytes((inputs["dataset"] / "images" / name).read_bytes())
    (folder / "broken.png").write_bytes(b"not an image")
    command = [BIN / "maskdet", "predict", folder, "--json", "--conf", "0.1", "--save-annotated", tmp_path / "drawn"]
    done = run(command, copy)
    results = json.loads(done.stdout)
    assert [Path(r["image"]).name for r in results] == ["maksssksksss0.png", "maksssksksss1.png"]
    assert all(len(r["detections"]) >= 1 for r in results)
    assert all(d["label"] in CLASSES and len(d["box"]) == 4 for r in results for d in r["detections"])
    assert "broken.png: skipped" in done.stderr
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["maksssksksss0.png", "maksssksksss1.png"]
    export = json.loads((copy / "reports" / "export.json").read_text())
    assert {"torch (best.pt)", "onnxruntime fp32", "openvino fp32", "openvino int8"} <= set(export["variants"])
    assert (copy / export["served"]).is_file()
    missing = run([BIN / "maskdet", "predict", tmp_path / "nothing.png"], copy, check=False)
    assert missing.returncode == 2 and "not found" in missing.stderr and "Traceback" not in missing.stderr


def test_predict_on_a_video_made_of_real_photos(pipeline, inputs, tmp_path):
    import cv2
    import numpy as np
    from PIL import Image

    copy, _ = pipeline
    frames = [
        np.asarray(Image.open(inputs["dataset"] / "images" / n).convert("RGB").resize((512, 384)))
        for n in ("maksssksksss0.png", "maksssksksss1.png")
    ]
    video = tmp_path / "entrance.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (512, 384))
    for frame in frames * 3:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    done = run(
        [BIN / "maskdet", "predict", video, "--json", "--every", "2", "--save-annotated", tmp_path / "drawn"], copy
    )
    results = json.loads(done.stdout)
    assert [r["frame"] for r in results] == [0, 2, 4] and [r["time_s"] for r in results] == [0.0, 0.4, 0.8]
    assert all(len(r["detections"]) >= 1 for r in results)
    annotated = cv2.VideoCapture(str(tmp_path / "drawn" / "entrance.mp4"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    progress = run([BIN / "maskdet", "predict", video], copy)
    assert "entrance.mp4: 100%" in progress.stderr and "frame" in progress.stderr


def test_a_fresh_clone_pulls_the_data_and_models_and_predicts_without_training(pipeline, inputs, tmp_path):
    copy, _ = pipeline
    remote = tmp_path / "remote"  # instead of .dvc/config's folder beside the project, for this copy only
    run([BIN / "dvc", "remote", "modify", "--local", "storage", "url", remote], copy)
    run([BIN / "dvc", "push"], copy)
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "trained"]):
        run(cmd, copy)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", copy, clone], tmp_path)
    assert not (clone / "models" / "best.pt").exists() and not (clone / "data" / "processed").exists()
    run([BIN / "dvc", "remote", "modify", "--local", "storage", "url", remote], clone)
    run([BIN / "dvc", "pull"], clone)
    assert "up to date" in run([BIN / "dvc", "status"], clone).stdout  # the pulled outputs are the ones dvc.lock names
    photo = inputs["dataset"] / "images" / "maksssksksss0.png"
    predict = [BIN / "maskdet", "predict", photo, "--json"]
    pulled, trained = (json.loads(run(predict, at).stdout) for at in (clone, copy))
    assert pulled == trained and pulled[0]["detections"]
