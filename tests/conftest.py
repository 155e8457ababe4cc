"""Shared fixtures: the project under test, its real inputs, and fresh copies of it to run stages in."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from maskdet.core import load_params, project_paths
from maskdet.sources import configured_sources

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def project():
    return project_paths(Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="session")
def inputs(project):
    """Paths of the folder of data sets, the starting weights and the real data set (the first source) named in
    params.yaml: they must exist."""
    params = load_params("inputs", project)
    found = {name: project.resolve(params[name]) for name in ("root", "weights")}
    missing = [f"{name}: {path}" for name, path in found.items() if not path.exists()]
    assert not missing, f"inputs named in params.yaml are missing: {missing}"
    return found | {"dataset": configured_sources(project)[0].path}


@pytest.fixture(scope="session")
def model(project, inputs, tmp_path_factory):
    """A model folder made from the starting face detector (and an untrained mask classifier), exported to ONNX and
    OpenVINO as the export stage does: real faces, real backends, no training needed."""
    from maskdet.inference import export_onnx, export_openvino
    from maskdet.model import MaskClassifier, default_config, save_checkpoint

    folder = tmp_path_factory.mktemp("model")
    weights = inputs["weights"]
    checkpoint = save_checkpoint(
        weights, MaskClassifier.from_yolo(weights), default_config(load_params("model", project)), folder / "best.pt"
    )
    export_openvino(export_onnx(checkpoint, folder), folder / "openvino" / "fp32")
    return folder


def wait_until(condition, what, timeout, interval=0.3, alive=None, output=None):
    """Poll `condition()` until it returns something truthy, and return it; fail naming `what` after `timeout` seconds,
    or as soon as the process `alive` has exited, with the end of its `output` file. Connection errors count as
    not yet."""
    def failed(reason):
        pytest.fail(f"{what}: {reason}" + (f"\n{Path(output).read_text()[-3000:]}" if output else ""))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            failed(f"the process exited with status {alive.returncode}")
        try:
            if found := condition():
                return found
        except (OSError, httpx.TransportError):
            pass
        time.sleep(interval)
    failed(f"not within {timeout} s")


def dashboard_root(project, target):
    """A project folder to serve (dashboards, `maskdet launch`): params.yaml, the dashboards, its own reports/."""
    (target / "nbs").mkdir(parents=True)
    shutil.copy2(project.params, target / "params.yaml")
    shutil.copytree(project.root / "nbs" / "dashboards", target / "nbs" / "dashboards")
    (target / "reports").mkdir()
    return target


def run(cmd, cwd, check=True, timeout=900, extra_env=None):
    """Run a command as a user of the venv would (its bin/ first on PATH), with `extra_env` added to the environment."""
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"} | (extra_env or {})
    for key in ("MASKDET_ROOT", "MLFLOW_TRACKING_URI", "YOLO_CONFIG_DIR", "MLFLOW_EXPERIMENT_NAME",
                "MLFLOW_KEEP_RUN_ACTIVE", "PYTEST_CURRENT_TEST"):
        env.pop(key, None)
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    if check:
        assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def set_params(root, changes):
    """Update params.yaml in `root`: `changes` maps 'section.key.sub' to a value."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def copy_project(project, target, changes):
    """A fresh git clone-like copy of the project (the files git tracks) with params changed."""
    listing = subprocess.run(["git", "ls-files"], cwd=project.root, capture_output=True, text=True, check=True)
    for name in listing.stdout.split():
        if (project.root / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project.root / name, target / name)
    set_params(target, changes)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        run(cmd, target)
    return target


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs, unmounted afterwards."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def fill(path):
    """Write zeros to `path` until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(65536))
    except OSError as error:
        assert error.errno == 28  # ENOSPC
    finally:
        os.close(fd)
