"""The prepare stage as a user runs it: `dvc repro prepare` in a fresh copy of the project.

The copy is made from the files git tracks, so it is what a clean clone holds; its params.yaml points
at the real data set by absolute path.
"""
import json

import pandas as pd
import pytest
from conftest import BIN, copy_project, run, set_params

from maskdet.core import CLASSES


@pytest.fixture(scope="module")
def prepared(project, inputs, tmp_path_factory):
    copy = copy_project(project, tmp_path_factory.mktemp("project"), {"inputs.dataset": str(inputs["dataset"])})
    first = run([str(BIN / "dvc"), "repro", "prepare"], copy)
    return copy, first


def test_prepare_writes_a_clean_split_dataset(prepared):
    copy, first = prepared
    assert "prepared 834 of 853 images" in first.stdout
    metrics = json.loads((copy / "reports" / "data.json").read_text())
    assert metrics["images_in"] == 853 and metrics["exact_duplicates_removed"] == 5
    assert metrics["near_duplicates_removed"] >= 10
    manifest = pd.read_csv(copy / "data" / "processed" / "manifest.csv")
    assert len(manifest) == metrics["images_out"]
    assert manifest.groupby("sha256").split.nunique().max() == 1
    assert manifest.groupby("phash").split.nunique().max() == 1
    assert manifest.groupby("group").split.nunique().max() == 1
    for split, counts in metrics["splits"].items():
        assert all(counts[c] > 0 for c in CLASSES), f"{split} lacks a class: {counts}"
    labels = sum(len(p.read_text().splitlines()) for p in (copy / "data" / "processed" / "labels").glob("*/*.txt"))
    assert labels == metrics["boxes_out"]
    report = json.loads((copy / "reports" / "prepare.ipynb").read_text())
    images = sum("image/png" in out.get("data", {}) for cell in report["cells"] for out in cell.get("outputs", []))
    assert images >= 5, "the executed report lacks its plots"


def test_prepare_applies_the_reviewed_label_corrections(prepared):
    copy, _ = prepared
    reviewed = pd.read_csv(copy / "data" / "label_corrections.csv")
    metrics = json.loads((copy / "reports" / "data.json").read_text())
    assert metrics["labels_corrected"] == len(reviewed) > 0
    processed = copy / "data" / "processed"
    decisions = pd.read_csv(processed / "decisions.csv")
    assert sorted(decisions.image_id[decisions.action == "label corrected"]) == sorted(reviewed.image_id)
    applied = pd.read_csv(processed / "label_corrections.csv")
    assert applied[["image_id", "annotated", "corrected"]].sort_values("image_id").values.tolist() == \
        reviewed[["image_id", "annotated", "corrected"]].sort_values("image_id").values.tolist()


def test_second_repro_does_nothing(prepared):
    copy, _ = prepared
    again = run([str(BIN / "dvc"), "repro", "prepare"], copy)
    assert "didn't change, skipping" in again.stdout and "Running stage" not in again.stdout
    assert "up to date" in run([str(BIN / "dvc"), "status", "prepare"], copy).stdout


def prepare_with(copy, change):
    """`maskdet prepare` with one parameter changed (dotted name -> value); params.yaml is put back after."""
    saved = (copy / "params.yaml").read_text()
    set_params(copy, change)
    try:
        return run([str(BIN / "maskdet"), "prepare"], copy, check=False)
    finally:
        (copy / "params.yaml").write_text(saved)


def assert_clear_message(done, says):
    """Exit status 2, no traceback, and the message as the last line (papermill's log may come before it)."""
    assert done.returncode == 2
    assert says in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize("make_source, says", [("missing", "does not exist"), ("empty", "is empty")])
def test_bad_source_is_one_clear_message(prepared, tmp_path, make_source, says):
    copy, _ = prepared
    source = tmp_path / "dataset"
    if make_source == "empty":
        source.mkdir()
    done = prepare_with(copy, {"inputs.dataset": str(source)})
    assert "inputs.dataset" in done.stderr and len(done.stderr.strip().splitlines()) == 1  # checked before the stage
    assert_clear_message(done, says)


@pytest.mark.parametrize("corrections, says", [(None, "corrections.csv: no such label corrections file"),
                                                ("stale", "matches 0 faces of that image")])
def test_bad_label_corrections_are_a_clear_message(prepared, tmp_path, corrections, says):
    copy, _ = prepared
    path = tmp_path / "corrections.csv"
    if corrections == "stale":
        reviewed = pd.read_csv(copy / "data" / "label_corrections.csv")
        reviewed.head(1).assign(x1=reviewed.x1.iloc[0] + 30).to_csv(path, index=False)  # a box on no face
    assert_clear_message(prepare_with(copy, {"prepare.label_corrections": str(path)}), says)
