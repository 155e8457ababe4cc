"""`maskdet launch` with real processes: the MLflow UI, the API and the dashboards on free ports.

Each launch runs in a project folder of its own (params.yaml and the dashboards; its MLflow store, logs and prediction
log start empty). The API serves the `model` fixture of conftest.py. After the launcher stops, not one process of the
launched trees may remain: the services, their workers and the Voila kernel started by rendering a dashboard.
"""

import os
import signal
import subprocess
import time

import httpx
import psutil
import pytest
from conftest import BIN, dashboard_root, wait_until

from maskdet.launch import free_port

HEALTHY_WITHIN_S = 60
API_KEY, TOKEN = "launch-key-7d1e", "launch-token-2b8a"
SECRETS = {"MASKDET_API_KEYS": f"old-key, {API_KEY}", "MASKDET_DASHBOARD_TOKEN": TOKEN}
NO_SECRETS = {"MASKDET_API_KEYS": "", "MASKDET_API_KEYS_FILE": "", "MASKDET_DASHBOARD_TOKEN": ""}


def launcher_env(root, model, secrets):
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MASKDET_ROOT": str(root),
                        "MASKDET_MODEL": str(model), "MASKDET_PREDICTION_LOG": str(root / "predictions.db")} | secrets
    for key in ("MLFLOW_TRACKING_URI", "YOLO_CONFIG_DIR", "PYTEST_CURRENT_TEST"):
        env.pop(key, None)
    return env


def start_launcher(root, model, secrets=NO_SECRETS):
    """`maskdet launch` in `root` on three free ports with `secrets` in its environment; returns the process, its
    output file and the ports."""
    ports = {"mlflow": free_port(), "api": free_port(), "dashboard": free_port()}
    output = root / "launcher.log"
    with open(output, "w") as out:
        process = subprocess.Popen(
            [BIN / "maskdet", "launch", "--timeout", str(HEALTHY_WITHIN_S), "--mlflow-port", str(ports["mlflow"]),
             "--api-port", str(ports["api"]), "--dashboard-port", str(ports["dashboard"])],
            cwd=root, env=launcher_env(root, model, secrets), stdout=out, stderr=subprocess.STDOUT)
    return process, output, ports


def status_rows(process, output):
    """The status table the launcher prints once every service is healthy: {name: {url, pid, state, log}}."""
    try:  # the services' limit, plus the launcher's own start
        wait_until(lambda: "Ctrl-C stops everything." in output.read_text(), "the status table", HEALTHY_WITHIN_S + 30,
                   interval=0.5, alive=process, output=output)
    finally:
        if process.poll() is None and "Ctrl-C stops everything." not in output.read_text():
            process.kill()
    lines = output.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:4] == ["service", "url", "pid", "state"])
    rows = {}
    for line in lines[header + 1:header + 4]:
        name, url, pid, state, log = line.split(maxsplit=4)
        rows[name] = {"url": url, "pid": int(pid) if pid != "-" else None, "state": state, "log": log}
    return rows


def process_trees(rows):
    """Every process of the launched services now: each service's process and its descendants."""
    found = []
    for row in rows.values():
        if row["pid"] is not None:
            root = psutil.Process(row["pid"])
            found += [root, *root.children(recursive=True)]
    return found


def still_running(processes):
    """Those of `processes` that still run (a process gone, or a zombie, does not)."""
    def running(process):
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    return [p for p in processes if running(p)]


@pytest.fixture
def stop_on_failure():
    """Launchers to stop however a test ends (a failed assertion must not leave services behind)."""
    launchers = []
    yield launchers.append
    for process in launchers:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)


def test_launch_serves_everything_until_ctrl_c_and_leaves_no_process(project, inputs, model, tmp_path,
                                                                     stop_on_failure):
    """With an API key and a dashboard token set: the launched services ask for them."""
    root = dashboard_root(project, tmp_path / "site")
    started = time.monotonic()
    launcher, output, ports = start_launcher(root, model, SECRETS)
    stop_on_failure(launcher)
    rows = status_rows(launcher, output)
    print(f"all healthy after {time.monotonic() - started:.1f} s")
    assert set(rows) == {"mlflow", "api", "dashboard"}
    assert {row["state"] for row in rows.values()} == {"healthy"}, output.read_text()
    assert rows["api"]["url"] == f"http://127.0.0.1:{ports['api']}/docs"
    for name in rows:
        assert (root / "logs" / f"{name}.log").is_file()

    photo = (inputs["dataset"] / "images" / "maksssksksss0.png").read_bytes()
    predict = f"http://127.0.0.1:{ports['api']}/predict"
    answer = httpx.post(predict, files={"file": ("photo.png", photo)}, headers={"Authorization": f"Bearer {API_KEY}"},
                        timeout=60)
    assert answer.status_code == 200 and len(answer.json()["detections"]) >= 2, answer.text
    assert httpx.post(predict, files={"file": ("photo.png", photo)}, timeout=60).status_code == 401
    assert httpx.get(f"http://127.0.0.1:{ports['mlflow']}/health", timeout=10).status_code == 200
    monitor = f"http://127.0.0.1:{ports['dashboard']}/voila/render/monitor.ipynb"
    assert httpx.get(monitor, timeout=30).status_code == 302  # to the login page
    page = httpx.get(f"{monitor}?token={TOKEN}", timeout=120)
    assert page.status_code == 200  # rendering starts a kernel: a process in a session of its own
    assert API_KEY not in output.read_text() and TOKEN not in output.read_text()

    trees = process_trees(rows)
    assert len(trees) > 3 and any("ipykernel" in " ".join(p.cmdline()) for p in trees)
    launcher.send_signal(signal.SIGINT)
    assert launcher.wait(timeout=60) == 0, output.read_text()
    assert still_running(trees) == [], output.read_text()
    assert "stopped" in output.read_text().split("Ctrl-C stops everything.")[1]
    for log in (root / "logs").glob("*.log"):
        assert API_KEY not in log.read_text() and TOKEN not in log.read_text(), log


@pytest.mark.parametrize("secrets, missing", [
    (NO_SECRETS, "MASKDET_API_KEYS (or MASKDET_API_KEYS_FILE) and MASKDET_DASHBOARD_TOKEN"),
    (NO_SECRETS | {"MASKDET_API_KEYS": API_KEY}, "MASKDET_DASHBOARD_TOKEN"),
    (NO_SECRETS | {"MASKDET_DASHBOARD_TOKEN": TOKEN}, "MASKDET_API_KEYS (or MASKDET_API_KEYS_FILE)"),
])
def test_launch_beyond_loopback_without_its_secrets_starts_nothing(project, model, tmp_path, secrets, missing):
    root = dashboard_root(project, tmp_path / "site")
    done = subprocess.run([BIN / "maskdet", "launch", "--host", "0.0.0.0", "--mlflow-port", str(free_port()),
                           "--api-port", str(free_port()), "--dashboard-port", str(free_port())],
                          cwd=root, env=launcher_env(root, model, secrets), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines() == [
        f"maskdet launch: --host 0.0.0.0 is reachable from other machines: set {missing} first"], done.stderr
    assert not (root / "logs" / "api.log").exists() and not (root / "logs" / "dashboard.log").exists()


def test_when_one_service_dies_the_others_stop_and_it_is_named(project, tmp_path, stop_on_failure):
    """No model here (a fresh clone): the API is skipped with what to run, MLflow and the dashboards start."""
    root = dashboard_root(project, tmp_path / "site")
    launcher, output, _ = start_launcher(root, root / "models")
    stop_on_failure(launcher)
    rows = status_rows(launcher, output)
    assert rows["api"]["state"] == "skipped" and "make pipeline" in rows["api"]["log"]
    assert rows["mlflow"]["state"] == rows["dashboard"]["state"] == "healthy"

    trees = process_trees(rows)
    os.kill(rows["dashboard"]["pid"], signal.SIGKILL)
    assert launcher.wait(timeout=60) == 1, output.read_text()
    told = output.read_text()
    assert f"dashboard (pid {rows['dashboard']['pid']}) exited" in told and str(root / "logs" / "dashboard.log") in told
    assert still_running(trees) == [], told
