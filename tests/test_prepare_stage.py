"""The prepare stage as a user runs it: `dvc repro prepare` in a fresh copy of the project.

The copy is made from the files git tracks, so it is what a clean clone holds; its params.yaml points
at the real data set by absolute path.
"""
import json

import pandas as pd
import pytest
import yaml
from conftest import BIN, copy_project, run

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


def test_second_repro_does_nothing(prepared):
    copy, _ = prepared
    again = run([str(BIN / "dvc"), "repro", "prepare"], copy)
    assert "didn't change, skipping" in again.stdout and "Running stage" not in again.stdout
    assert "up to date" in run([str(BIN / "dvc"), "status", "prepare"], copy).stdout


@pytest.mark.parametrize("make_source, says", [("missing", "does not exist"), ("empty", "is empty")])
def test_bad_source_is_one_clear_message(prepared, tmp_path, make_source, says):
    copy, _ = prepared
    source = tmp_path / "dataset"
    if make_source == "empty":
        source.mkdir()
    params = yaml.safe_load((copy / "params.yaml").read_text())
    saved = (copy / "params.yaml").read_text()
    params["inputs"]["dataset"] = str(source)
    (copy / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        done = run([str(BIN / "maskdet"), "prepare"], copy, check=False)
    finally:
        (copy / "params.yaml").write_text(saved)
    assert done.returncode == 2
    assert "inputs.dataset" in done.stderr and says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr + done.stdout
