"""The registered model outside this project: its pinned environment installs into a fresh virtualenv from the
package index, has no torch, and `mlflow models serve` there answers over HTTP what the model answers here."""
import base64
import os
import subprocess
import venv

import httpx
import mlflow
import pandas as pd
import pytest
from conftest import wait_until

from maskdet.inference import Detector
from maskdet.launch import free_port
from maskdet.pyfunc import detections_of, log_pyfunc


@pytest.fixture
def logged_model(model, inputs, tmp_path, monkeypatch):
    """The pyfunc model `register_model` logs for the `model` folder, in a throw-away MLflow store, downloaded."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    photo = (inputs["dataset"] / "images" / "maksssksksss0.png").read_bytes()
    try:
        experiment = mlflow.create_experiment("pyfunc-env", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = log_pyfunc(model, photo)
        folder = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "downloaded"))
    finally:
        mlflow.set_tracking_uri(None)
    return folder, photo


def test_pyfunc_serves_from_a_fresh_virtualenv(model, logged_model, tmp_path):
    folder, photo = logged_model
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    installed = subprocess.run([python, "-m", "pip", "install", "-q", "-r", f"{folder}/requirements.txt"],
                               capture_output=True, text=True, timeout=1200)
    assert installed.returncode == 0, installed.stderr[-3000:]
    has_torch = subprocess.run([python, "-c", "import torch"], capture_output=True).returncode == 0
    assert not has_torch, "torch is in the model's environment"

    port, log = free_port(), tmp_path / "serve.log"
    activated = os.environ | {"PATH": f"{env / 'bin'}{os.pathsep}{os.environ['PATH']}"}  # the venv's uvicorn first
    with open(log, "w") as output:
        server = subprocess.Popen([env / "bin" / "mlflow", "models", "serve", "-m", folder, "--env-manager", "local",
                                   "--host", "127.0.0.1", "--port", str(port)], stdout=output, stderr=subprocess.STDOUT,
                                  env=activated)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/ping", timeout=2).status_code == 200, "mlflow models serve's /ping", 300,
                   alive=server, output=log)
        def invocation(image: bytes) -> dict:
            return {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(image).decode()]]}}
        response = httpx.post(f"{url}/invocations", json=invocation(photo), timeout=120)
        assert response.status_code == 200, response.text
        bad = httpx.post(f"{url}/invocations", json=invocation(b"not an image"), timeout=60)
    finally:
        server.terminate()
        server.wait(timeout=30)
    answer = pd.DataFrame(response.json()["predictions"])
    expected = detections_of(Detector(model), pd.DataFrame({"image": [photo]}))
    assert len(expected) > 0
    assert answer[["image", "label"]].values.tolist() == expected[["image", "label"]].values.tolist()
    assert (answer[["x1", "y1", "x2", "y2"]] - expected[["x1", "y1", "x2", "y2"]]).abs().max().max() <= 1
    assert (answer["confidence"] - expected["confidence"]).abs().max() <= 1e-3
    assert bad.status_code >= 400 and "send a JPEG, PNG" in bad.text, bad.text
