"""Model files as their users meet them: `best.pt` loads with `weights_only=True`, and ultralytics loads it without
maskdet; a file that names code is refused before that code runs; and a model that cannot be used, whatever its
backend, is one line and exit status 2 from `maskdet`, never a traceback.

The model is the `model` fixture of conftest.py (the starting face detector and an untrained classifier, saved with
`save_checkpoint` and exported to ONNX and OpenVINO); the broken files are made from its real files, in tmp folders.
"""

import os
import pickle
import random
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import BIN

from maskdet.core import ModelError, load_params
from maskdet.inference import Detector
from maskdet.model import (
    FILE_FORMAT,
    MODEL_KEY,
    MaskClassifier,
    MaskDetector,
    default_config,
    detector_classes,
    load_checkpoint,
)


@pytest.fixture(scope="module")
def photo(inputs):
    return inputs["dataset"] / "images" / "maksssksksss0.png"


def test_best_pt_loads_with_weights_only_given_the_detector_classes(model):
    with torch.serialization.safe_globals(detector_classes()):
        checkpoint = torch.load(model / "best.pt", map_location="cpu", weights_only=True)
    part = checkpoint[MODEL_KEY]
    assert part["format"] == FILE_FORMAT
    assert part["classifier"] == {"kind": "MaskClassifier", "scale": "n", "dropout": 0.2, "outputs": 3}
    assert part["weights"] and all(isinstance(t, torch.Tensor) for t in part["weights"].values())
    assert type(checkpoint["model"]).__name__ == "DetectionModel"
    # Without the list it cannot: ultralytics pickles its detector as modules (which YOLO("best.pt") needs).
    with pytest.raises(pickle.UnpicklingError, match="ultralytics.nn.tasks.DetectionModel"):
        torch.load(model / "best.pt", map_location="cpu", weights_only=True)


WITHOUT_MASKDET = textwrap.dedent(
    """
    import sys
    sys.modules["maskdet"] = None  # maskdet is installed in this venv: make it unimportable
    try:
        import maskdet
    except ImportError:
        pass
    else:
        raise SystemExit("maskdet could be imported")
    import torch
    import torch.nn as nn
    from ultralytics import YOLO
    from ultralytics.nn.modules.block import C2f, DFL, SPPF, Bottleneck
    from ultralytics.nn.modules.conv import Concat, Conv
    from ultralytics.nn.modules.head import Detect
    from ultralytics.nn.tasks import DetectionModel

    allowed = [DetectionModel, Detect, Conv, Concat, C2f, Bottleneck, SPPF, DFL,
               nn.Sequential, nn.ModuleList, nn.Conv2d, nn.BatchNorm2d, nn.SiLU, nn.MaxPool2d, nn.Upsample]
    with torch.serialization.safe_globals(allowed):
        checkpoint = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
    faces = YOLO(sys.argv[1]).predict(sys.argv[2], verbose=False)[0].boxes
    print(sorted(checkpoint["maskdet"]), len(faces))
    """
)


def test_ultralytics_loads_best_pt_in_a_python_without_maskdet(model, photo, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASKDET_", "YOLO_"))}
    env |= {"YOLO_CONFIG_DIR": str(tmp_path), "YOLO_OFFLINE": "true", "YOLO_AUTOINSTALL": "false"}
    done = subprocess.run([sys.executable, "-I", "-c", WITHOUT_MASKDET, str(model / "best.pt"), str(photo)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    keys, faces = done.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert keys == "['classes', 'classifier', 'closeup_detector', 'config', 'format', 'weights']" and int(faces) >= 3


class Planted:
    """An object whose unpickling runs Python code: it creates the file `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def maskdet(*args, cwd, env=None):
    """Run `maskdet` as a user of the venv would, in `cwd`, with `env` added to a clean maskdet/MLflow environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MASKDET_", "MLFLOW_", "YOLO_", "PYTEST_"))}
    clean |= {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"} | (env or {})
    return subprocess.run([str(BIN / "maskdet"), *map(str, args)], cwd=cwd, env=clean, capture_output=True, text=True,
                          timeout=300)


def one_line_exit_2(done, command):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith(f"maskdet {command}: "), done.stderr
    assert "Traceback" not in done.stderr and not done.stdout
    return lines[0]


@pytest.mark.parametrize("where", ["top level", "model settings"])
def test_a_checkpoint_holding_code_is_refused_before_the_code_runs(model, photo, tmp_path, where):
    checkpoint, marker = load_checkpoint(model / "best.pt"), tmp_path / "marker"
    if where == "top level":
        checkpoint["note"] = Planted(marker)
    else:
        checkpoint[MODEL_KEY]["config"]["margin"] = Planted(marker)
    planted = tmp_path / "best.pt"
    torch.save(checkpoint, planted)
    for load in (load_checkpoint, MaskDetector, Detector):
        with pytest.raises(ModelError, match=r"refused: it names builtins\.exec, which a YOLOv8 checkpoint does not"):
            load(planted)
    line = one_line_exit_2(maskdet("predict", photo, "--model", planted, cwd=tmp_path), "predict")
    assert str(planted) in line
    assert not marker.exists()
    torch.load(planted, weights_only=False)  # what the file would do to a loader that trusts it
    assert marker.exists()


@pytest.fixture(scope="module")
def old_checkpoint(project, inputs, tmp_path_factory):
    """A best.pt as maskdet wrote it before file format 2: the classifier pickled as a module."""
    checkpoint = torch.load(inputs["weights"], map_location="cpu", weights_only=False)
    checkpoint[MODEL_KEY] = {"classifier": MaskClassifier(), "config": default_config(load_params("model", project)),
                             "classes": ["with_mask", "without_mask", "mask_weared_incorrect"]}
    path = tmp_path_factory.mktemp("old") / "best.pt"
    torch.save(checkpoint, path)
    return path


RETRAIN = "retrain with `dvc repro train` (or `maskdet train`)"


def test_an_older_maskdet_checkpoint_says_to_retrain(old_checkpoint, photo, tmp_path):
    with pytest.raises(ModelError, match="saved by an older maskdet") as refused:
        MaskDetector(old_checkpoint)
    assert str(refused.value).endswith(RETRAIN)
    line = one_line_exit_2(maskdet("predict", photo, "--model", old_checkpoint, cwd=tmp_path), "predict")
    assert "saved by an older maskdet" in line and line.endswith(RETRAIN)


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_stages_refuse_an_older_checkpoint_before_they_start(project, old_checkpoint, tmp_path, command):
    shutil.copy(project.params, tmp_path / "params.yaml")
    (tmp_path / "models").mkdir()
    shutil.copy(old_checkpoint, tmp_path / "models" / "best.pt")
    line = one_line_exit_2(maskdet(command, cwd=tmp_path), command)
    assert "models/best.pt was saved by an older maskdet" in line and line.endswith(RETRAIN)
    assert not (tmp_path / "reports" / f"{command}.ipynb").exists()


HOW = ("missing", "empty", "truncated", "random", "photo")
KINDS = {"best.pt": ("best.pt",), "model.onnx": ("model.onnx", "model.json", "closeup.onnx", "classifier.onnx"),
         "model.xml": ("openvino/fp32/model.xml", "openvino/fp32/model.bin", "openvino/fp32/model.json",
                       "openvino/fp32/closeup.xml", "openvino/fp32/closeup.bin",
                       "openvino/fp32/classifier.onnx", "openvino/fp32/classifier.xml", "openvino/fp32/classifier.bin")}


def broken(data: bytes, how: str, photo) -> bytes:
    """`data` made unusable: `empty`, `truncated` (its first half), `random` bytes, or a `photo` in its place."""
    return {"empty": b"", "truncated": data[: len(data) // 2], "random": random.Random(0).randbytes(4096),
            "photo": photo.read_bytes()}[how]


@pytest.fixture(scope="module")
def broken_models(model, photo, tmp_path_factory):
    """For each model kind and way of breaking it, a folder holding that kind with its main file broken (or gone)."""
    root, made = tmp_path_factory.mktemp("broken"), {}
    for kind, files in KINDS.items():
        for how in HOW:
            folder = root / f"{kind}-{how}"
            for name in files:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(model / name, folder / name)
            main = folder / files[0]
            if how == "missing":
                main.unlink()
            else:
                main.write_bytes(broken(main.read_bytes(), how, photo))
            made[kind, how] = main
    return made


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("how", HOW)
def test_predict_with_an_unusable_model_file_is_one_line_and_exit_2(broken_models, photo, tmp_path, kind, how):
    path = broken_models[kind, how]
    line = one_line_exit_2(maskdet("predict", photo, "--model", path, cwd=tmp_path), "predict")
    assert str(path) in line


@pytest.mark.parametrize("how", ["missing", "truncated"])
def test_a_models_folder_whose_model_cannot_be_used_is_one_line_and_exit_2(broken_models, photo, tmp_path, how):
    folder = broken_models["model.xml", how].parents[2]  # its fastest model: openvino/fp32/model.xml
    line = one_line_exit_2(maskdet("predict", photo, "--model", folder, cwd=tmp_path), "predict")
    says = f"no model in {folder}/" if how == "missing" else "openvino/fp32/model.xml: OpenVINO cannot read it"
    assert says in line


@pytest.mark.parametrize("part, how, says", [
    ("model.json", "missing", "model.json cannot be read (FileNotFoundError)"),
    ("model.json", "photo", "model.json cannot be read (UnicodeDecodeError)"),
    ("classifier.onnx", "truncated", "classifier.onnx: ONNX Runtime cannot read it"),
    ("openvino/fp32/model.bin", "truncated", "model.xml: OpenVINO cannot read it (Incorrect weights in bin file!)"),
    ("openvino/fp32/closeup.bin", "truncated", "closeup.xml: OpenVINO cannot read it (Incorrect weights in bin file!)"),
    ("closeup.onnx", "random", "closeup.onnx is not an ONNX model"),
])
def test_a_broken_part_of_an_exported_model_is_named(model, photo, tmp_path, part, how, says):
    folder = tmp_path / "models"
    shutil.copytree(model, folder, ignore=shutil.ignore_patterns("best.pt"))
    target = folder / part
    if how == "missing":
        target.unlink()
    else:
        target.write_bytes(broken(target.read_bytes(), how, photo))
    with pytest.raises(ModelError, match="export it again with `maskdet export`") as refused:
        Detector(folder / ("openvino/fp32/model.xml" if "openvino" in part else "model.onnx"))
    assert says in str(refused.value)


def test_serve_with_an_unusable_model_is_one_line_and_exit_2(broken_models, tmp_path):
    path = broken_models["model.onnx", "photo"]
    line = one_line_exit_2(maskdet("serve", "--model", path, "--port", "1", cwd=tmp_path), "serve")
    assert f"{path} is not an ONNX model" in line


@pytest.fixture(scope="module")
def registry(model, tmp_path_factory):
    """A throw-away MLflow store holding one run whose artifacts are a garbage best.pt; its tracking URI and run id."""
    import mlflow

    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder}/mlflow.db"
    garbage = folder / "upload" / "best.pt"
    garbage.parent.mkdir()
    garbage.write_bytes(os.urandom(4096))
    saved = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("broken", artifact_location=(folder / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as started:
            mlflow.log_artifact(str(garbage), "model")
    finally:
        mlflow.set_tracking_uri(saved)
    return uri, started.info.run_id


@pytest.mark.parametrize("reference, says", [("models:/maskdet@champion", "is not in the model registry"),
                                             ("runs:/{run}/model", "is not a PyTorch checkpoint")])
def test_a_registry_model_that_cannot_be_used_is_one_line_and_exit_2(registry, photo, tmp_path, reference, says):
    uri, run_id = registry
    reference = reference.format(run=run_id)
    done = maskdet("predict", photo, "--model", reference, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert says in one_line_exit_2(done, "predict")
