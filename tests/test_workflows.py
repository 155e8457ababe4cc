"""The GitHub Actions workflows: actionlint finds nothing in them, and retraining runs weekly and by hand."""

import shutil
import subprocess
import tarfile

import yaml
from conftest import BIN, copy_project, run

from maskdet.readers import sample_voc


def workflows(project):
    return sorted((project.root / ".github" / "workflows").glob("*.yml"))


def test_actionlint_finds_nothing_in_the_workflows(project):
    files = workflows(project)
    assert {f.name for f in files} >= {"ci.yml", "retrain.yml"}
    done = subprocess.run([BIN / "actionlint", "-no-color", *files], cwd=project.root, capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done.stdout + done.stderr


def test_retraining_runs_on_a_schedule_and_by_hand(project):
    workflow = yaml.safe_load((project.root / ".github" / "workflows" / "retrain.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert [entry["cron"] for entry in triggers["schedule"]] and "workflow_dispatch" in triggers


def test_the_inputs_script_says_what_is_missing_then_fetches_them(project, inputs, tmp_path):
    copy = copy_project(project, tmp_path / "project", {})  # params as committed: the inputs under ../shared
    script, output = copy / ".github" / "inputs.sh", tmp_path / "github-output"
    env = {"PYTHON": str(BIN / "python"), "GITHUB_OUTPUT": str(output)}
    done = run(["bash", script], copy, extra_env=env)
    assert "::notice::the pipeline's inputs are missing" in done.stdout and "MASKDET_INPUTS_URL" in done.stdout
    assert output.read_text() == "available=false\n"
    # what the secret names: a .tar.gz of datasets/ and weights/, here 5 real photos and the real weights
    packed = tmp_path / "packed"
    sample_voc(inputs["dataset"], packed / "datasets" / "face-mask-detection", 5)
    (packed / "weights").mkdir()
    shutil.copy2(inputs["weights"], packed / "weights" / "yolov8n-face.pt")
    with tarfile.open(tmp_path / "inputs.tar.gz", "w:gz") as archive:
        archive.add(packed / "datasets", "datasets")
        archive.add(packed / "weights", "weights")
    output.unlink()
    done = run(["bash", script], copy, extra_env=env | {"MASKDET_INPUTS_URL": (tmp_path / "inputs.tar.gz").as_uri()})
    assert output.read_text() == "available=true\n", done.stdout + done.stderr
    assert (tmp_path / "shared" / "weights" / "yolov8n-face.pt").read_bytes() == inputs["weights"].read_bytes()
    assert len(list((tmp_path / "shared" / "datasets" / "face-mask-detection" / "images").iterdir())) == 5
