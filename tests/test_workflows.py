"""The GitHub Actions workflows: actionlint finds nothing in them, and retraining runs weekly and by hand."""

import subprocess

import yaml
from conftest import BIN


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
