"""The Docker stack as a user runs it: `make test-docker`.

The base image is built locally when missing (deployment/build-base.sh: no registry is reachable here), and a
Docker daemon is started for the test when none runs (and stopped after it); where the machine refuses to run
one (dockerd exits at once: no root, no kernel support), the tests are skipped with dockerd's own words.
The images are built from the repository; `compose up` starts the API, the dashboards, MLflow and the drift
job on free 127.0.0.1 ports, with their secrets set as a user sets them (API keys, the dashboards' token,
MLflow's admin password): each service must refuse a request without its secret and answer one with it, and
no secret may appear in the services' logs. The API serves the `model` fixture of conftest.py; the drift
reference is 120 real photos prepared as the pipeline prepares them. Real photos go through the published API
port; the dashboards and MLflow must answer; the drift job must write its decision about the logged
predictions into its volume. Two versions of the model are then registered in the stack's MLflow as the
register stage logs them: the API restarted on models:/maskdet@champion downloads and serves the champion,
and after the alias moves to the other version and `compose restart api`, that one. At the end `down -v`
removes containers and volumes, and the images this build replaced are pruned.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from conftest import run, wait_until

from maskdet.core import IMAGE_SUFFIXES, load_params
from maskdet.inference import Detector, find_model, model_version
from maskdet.launch import free_port
from maskdet.prepare import prepare_dataset
from maskdet.pyfunc import log_pyfunc
from maskdet.readers import sample_voc

STARTED_WITHIN_S = 300
DRIFT_EVERY_S = 10
LOGGED = 40  # photos sent through the API: more than the drift check's min_window
ROOT = Path(__file__).resolve().parents[2]
API_KEY, TOKEN = "stack-key-5e0b71", "stack-token-c3a9d2"
MLFLOW_USER, MLFLOW_PASSWORD = "admin", "stack-mlflow-pw-81f4"
SECRETS = {"MASKDET_API_KEYS": f"stack-old-key, {API_KEY}", "MASKDET_DASHBOARD_TOKEN": TOKEN,
           "MLFLOW_TRACKING_USERNAME": MLFLOW_USER, "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "stack-flask-secret-0d6e"}
AUTHORIZED = {"Authorization": f"Bearer {API_KEY}"}


def docker(*args, check=True, timeout=600):
    return run(["docker", *args], ROOT, check, timeout)


def daemon_answers():
    return shutil.which("docker") is not None and docker("info", check=False, timeout=30).returncode == 0


@pytest.fixture(scope="session")
def docker_daemon(tmp_path_factory):
    """A running Docker daemon: the one already there, else one started here (`dockerd`) and stopped afterwards."""
    if daemon_answers():
        yield
        return
    dockerd = shutil.which("dockerd")
    assert dockerd, "no Docker daemon runs and dockerd is not installed: run `make docker-tools` (Debian's docker.io)"
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with open(log, "w") as out:
        process = subprocess.Popen([dockerd], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not daemon_answers():
        if process.poll() is not None:
            pytest.skip(f"this machine cannot run a Docker engine (dockerd exited):\n{log.read_text()[-2000:]}")
        assert time.monotonic() < deadline, f"dockerd runs but does not answer after 60 s:\n{log.read_text()[-3000:]}"
        time.sleep(1)
    yield
    process.terminate()
    process.wait(timeout=60)


def compose_command():
    if docker("compose", "version", check=False).returncode == 0:
        return ["docker", "compose"]
    assert shutil.which("docker-compose"), "neither `docker compose` nor docker-compose: run `make docker-tools`"
    return ["docker-compose"]


def readable_by_all(folder):
    """The containers run as an unprivileged user: let it read the mounted folder."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
    return folder


@pytest.fixture(scope="session")
def reference(project, inputs, tmp_path_factory):
    """A data folder whose processed/ holds 120 real photos prepared and split as the pipeline does."""
    data = tmp_path_factory.mktemp("data")
    sample = sample_voc(inputs["dataset"], tmp_path_factory.mktemp("voc"), 120)
    prepare_dataset(sample, data / "processed", load_params("prepare", project))
    return readable_by_all(data)


@pytest.fixture(scope="session")
def photos(inputs):
    """Real photos of the data set that the reference does not hold."""
    files = sorted(p for p in (inputs["dataset"] / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return files[-LOGGED:]


@pytest.fixture(scope="session")
def stack(project, docker_daemon, model, reference):
    """The compose stack, built and started: {'ports', 'compose'}; `down -v` when the tests are done."""
    run(["bash", project.root / "deployment" / "build-base.sh"], project.root)
    ports = {"api": free_port(), "dashboard": free_port(), "mlflow": free_port()}
    env = {
        "COMPOSE_PROJECT_NAME": f"maskdet-test-{os.getpid()}",
        "MASKDET_MODELS_DIR": str(readable_by_all(model)), "MASKDET_DATA_DIR": str(reference),
        "MASKDET_API_PORT": str(ports["api"]), "MASKDET_DASHBOARD_PORT": str(ports["dashboard"]),
        "MASKDET_MLFLOW_PORT": str(ports["mlflow"]),
        "MASKDET_DRIFT_EVERY": str(DRIFT_EVERY_S), "MASKDET_DRIFT_WINDOW": "1h", **SECRETS,
    }
    command = [*compose_command(), "-f", project.root / "deployment" / "docker-compose.yml"]

    def compose(*args, check=True, **settings):
        return run([*command, *args], project.root, check, extra_env=env | settings)

    started = time.monotonic()
    compose("build")
    sizes = {name: int(docker("image", "inspect", "-f", "{{.Size}}", f"maskdet-{name}").stdout) / 1e6
             for name in ("api", "dashboard", "mlflow")}
    built = ", ".join(f"{name} {mb:.0f} MB" for name, mb in sizes.items())
    print(f"images built in {time.monotonic() - started:.0f} s: {built}")
    try:
        compose("up", "-d")
        yield {"ports": ports, "compose": compose}
    finally:
        print(compose("logs", "--no-color", "--tail", "30", check=False).stdout[-6000:])
        compose("down", "-v", "--remove-orphans", check=False)
        docker("image", "prune", "-f", "--filter", "label=maskdet.service", check=False)


def health(stack, service):
    """The health state Docker reports for the container of `service`."""
    container = stack["compose"]("ps", "-q", service).stdout.strip()
    if not container:
        return "no container"
    return docker("inspect", "-f", "{{.State.Health.Status}}", container).stdout.strip()


@pytest.mark.parametrize("service", ["api", "dashboard", "mlflow"])
def test_the_services_become_healthy(stack, service):
    wait_until(lambda: health(stack, service) == "healthy", f"{service} healthy", STARTED_WITHIN_S, interval=2)


def upload(photo):
    return photo.name, photo.read_bytes(), "image/png"


def test_the_api_detects_faces_in_a_real_photo_through_its_published_port(stack, model, photos):
    url = f"http://127.0.0.1:{stack['ports']['api']}"
    wait_until(lambda: httpx.get(f"{url}/health").status_code == 200, "the API's /health", STARTED_WITHIN_S, interval=2)
    expected = Detector(model).predict(photos[0]).to_dicts()
    answer = httpx.post(f"{url}/predict", files={"file": upload(photos[0])}, headers=AUTHORIZED, timeout=60)
    assert answer.status_code == 200, answer.text
    found = answer.json()["detections"]
    assert found, "no face found in a photo with faces"
    assert [d["label"] for d in found] == [d["label"] for d in expected]
    assert np.abs(np.array([d["box"] for d in found]) - np.array([d["box"] for d in expected])).max() <= 1.0
    assert answer.json()["model"]["backend"] == "openvino"


def test_a_batch_through_the_api_is_logged_and_checked_for_drift(stack, photos):
    url = f"http://127.0.0.1:{stack['ports']['api']}"
    wait_until(lambda: httpx.get(f"{url}/health").status_code == 200, "the API's /health", STARTED_WITHIN_S, interval=2)
    for start in range(0, len(photos), 10):
        chunk = photos[start:start + 10]
        answer = httpx.post(f"{url}/predict/batch", files=[("files", upload(p)) for p in chunk], headers=AUTHORIZED,
                            timeout=120)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["results"]) == len(chunk)

    def decision():
        done = stack["compose"]("exec", "-T", "drift", "cat", "/app/reports/drift.json", check=False)
        if done.returncode:
            return None
        found = json.loads(done.stdout)
        return found if found["window"].get("images", 0) >= len(photos) else None

    found = wait_until(decision, "a drift decision over the logged photos", DRIFT_EVERY_S * 6 + 120, interval=2)
    assert found["status"] in ("drift", "no drift"), found["message"]
    assert found["window"]["reference_images"] > 0
    report = stack["compose"]("exec", "-T", "drift", "ls", "/app/reports/drift", check=False).stdout.split()
    assert "report.html" in report, report


def test_the_api_asks_for_a_key_and_health_stays_open(stack, photos):
    url = f"http://127.0.0.1:{stack['ports']['api']}"
    wait_until(lambda: httpx.get(f"{url}/health").status_code == 200, "the API's /health", STARTED_WITHIN_S, interval=2)
    for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": API_KEY}):
        refused = httpx.post(f"{url}/predict", files={"file": upload(photos[0])}, headers=headers, timeout=60)
        assert refused.status_code == 401, (headers, refused.status_code, refused.text)
    answer = httpx.post(f"{url}/predict", files={"file": upload(photos[0])}, headers=AUTHORIZED, timeout=60)
    assert answer.status_code == 200, answer.text


def test_the_dashboards_answer_with_their_token_only(stack):
    url = f"http://127.0.0.1:{stack['ports']['dashboard']}"
    wait_until(lambda: httpx.get(f"{url}/?token={TOKEN}").status_code == 200, "the dashboards' index", STARTED_WITHIN_S,
               interval=2)
    for page in ("monitor.ipynb", "webcam.ipynb"):
        refused = httpx.get(f"{url}/voila/render/{page}", timeout=30)
        assert refused.status_code == 302 and refused.headers["location"].startswith("/login"), page
        answer = httpx.get(f"{url}/voila/render/{page}?token={TOKEN}", timeout=120)
        assert answer.status_code == 200, (page, answer.status_code)


def test_mlflow_asks_for_its_password_and_keeps_a_registry(stack):
    url = f"http://127.0.0.1:{stack['ports']['mlflow']}"
    wait_until(lambda: httpx.get(f"{url}/health").status_code == 200, "MLflow's /health", STARTED_WITHIN_S, interval=2)
    admin = (MLFLOW_USER, MLFLOW_PASSWORD)
    assert httpx.get(f"{url}/").status_code == 401
    search = f"{url}/api/2.0/mlflow/registered-models/search"
    assert httpx.get(search).status_code == httpx.get(search, auth=(MLFLOW_USER, "wrong-password")).status_code == 401
    assert httpx.get(f"{url}/", auth=admin).status_code == 200
    created = httpx.post(f"{url}/api/2.0/mlflow/registered-models/create", json={"name": "maskdet"}, auth=admin)
    assert created.status_code == 200, created.text
    listed = httpx.get(search, auth=admin).json()
    assert [m["name"] for m in listed["registered_models"]] == ["maskdet"]


@pytest.fixture
def stack_registry(stack, monkeypatch):
    """An MLflow client of the stack's MLflow server, logged in as its admin."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", MLFLOW_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", MLFLOW_PASSWORD)
    url, before = f"http://127.0.0.1:{stack['ports']['mlflow']}", mlflow.get_tracking_uri()
    wait_until(lambda: httpx.get(f"{url}/health").status_code == 200, "MLflow's /health", STARTED_WITHIN_S, interval=2)
    mlflow.set_tracking_uri(url)
    mlflow.set_experiment("stack")
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(before)


def stricter_copy(model, target):
    """The model folder `model` copied with higher class thresholds in its model.json files: another version."""
    shutil.copytree(model, target)
    for settings in target.rglob("model.json"):
        config = json.loads(settings.read_text())
        config["thresholds"] = {label: 0.6 for label in config["thresholds"]}
        settings.write_text(json.dumps(config))
    return target


def registered(models, example):
    """A new version of the registered model `maskdet`: the served model of the folder `models`, logged as the
    pipeline's register stage logs it."""
    with mlflow.start_run():
        logged = log_pyfunc(models, example)
    return mlflow.register_model(logged.model_uri, "maskdet").version


def served_version(url):
    answer = httpx.get(f"{url}/model", headers=AUTHORIZED, timeout=10)
    return answer.status_code == 200 and answer.json()["version"]


def test_the_api_serves_the_champion_of_the_registry_and_a_promoted_version_after_a_restart(
        stack, stack_registry, model, photos, tmp_path):
    versions = [registered(folder, photos[0].read_bytes()) for folder in (model, stricter_copy(model, tmp_path / "v2"))]
    stack_registry.set_registered_model_alias("maskdet", "champion", versions[0])
    stack["compose"]("up", "-d", "--no-deps", "api", MASKDET_MODEL="models:/maskdet@champion")
    url = f"http://127.0.0.1:{stack['ports']['api']}"
    expected = model_version(find_model(model))
    wait_until(lambda: served_version(url) == expected, f"the API serving version {versions[0]} ({expected})",
               STARTED_WITHIN_S, interval=2)

    stack_registry.set_registered_model_alias("maskdet", "champion", versions[1])
    stack["compose"]("restart", "api")
    expected = model_version(find_model(tmp_path / "v2"))
    wait_until(lambda: served_version(url) == expected,
               f"the API serving version {versions[1]} ({expected}) after a restart", STARTED_WITHIN_S, interval=2)
    answer = httpx.post(f"{url}/predict", files={"file": upload(photos[1])}, headers=AUTHORIZED, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"]["version"] == expected
    served = [d["label"] for d in answer.json()["detections"]]
    assert served == [d["label"] for d in Detector(tmp_path / "v2").predict(photos[1]).to_dicts()]


def test_no_secret_reaches_the_logs(stack):
    told = stack["compose"]("logs", "--no-color", check=False).stdout
    assert told, "no logs"
    for secret in (API_KEY, TOKEN, MLFLOW_PASSWORD, SECRETS["MLFLOW_FLASK_SERVER_SECRET_KEY"]):
        assert secret not in told


def test_the_api_image_holds_no_torch_and_stays_under_1_gb(stack):
    size = int(docker("image", "inspect", "-f", "{{.Size}}", "maskdet-api").stdout)
    assert size <= 1e9, f"maskdet-api is {size / 1e6:.0f} MB"
    found = docker("run", "--rm", "--entrypoint", "python3", "maskdet-api", "-c",
                   "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('ultralytics'))").stdout
    assert found.split() == ["None", "None"], found
