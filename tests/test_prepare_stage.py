"""The prepare stage as a user runs it: `dvc repro prepare` in a fresh copy of the project.

The copy is made from the files git tracks, so it is what a clean clone holds; its params.yaml points
at the folder of the real data set (inputs.root) by absolute path. A second real source is made from
the real data set's own faces, cut at their boxes into image-level folders.
"""
import json
import re
import shutil

import pandas as pd
import pytest
import yaml
from conftest import BIN, copy_project, run, set_params

from maskdet.core import CLASSES, load_params
from maskdet.sources import sample_face_folders


@pytest.fixture(scope="module")
def prepared(project, inputs, tmp_path_factory):
    copy = copy_project(project, tmp_path_factory.mktemp("project"), {"inputs.root": str(inputs["root"])})
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


def real_source(project):
    """The first source of the project's params.yaml: the real data set."""
    return load_params("inputs", project)["sources"][0]


def bad_source(kind, folder, photo):
    """A second source named 'extra' with one kind of mistake, made in `folder` (its pictures copies of `photo`)."""
    pictures = {"loose pictures": folder, "unknown class": folder / "helmet"}.get(kind)
    if kind == "empty":
        folder.mkdir()
    if pictures:
        pictures.mkdir(parents=True)
        shutil.copy(photo, pictures)
    formats = {"unknown format": "pascal", "loose pictures": "folders"}
    return {"name": "extra", "path": str(folder), "format": formats.get(kind, "auto")}


@pytest.mark.parametrize("kind, says", [("missing", "does not exist"), ("empty", "is empty"),
                                        ("unknown format", "unknown data set format 'pascal'"),
                                        ("loose pictures", "has no class sub-folders"), ("unknown class", "helmet/")])
def test_bad_source_is_one_clear_message(project, inputs, prepared, tmp_path, kind, says):
    copy, _ = prepared
    extra = bad_source(kind, tmp_path / "extra", inputs["dataset"] / "images" / "maksssksksss0.png")
    done = prepare_with(copy, {"inputs.sources": [real_source(project), extra]})
    assert "source 'extra' (inputs.sources" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # checked before the stage ran
    assert_clear_message(done, says)


def test_two_sources_of_one_name_are_refused(project, prepared):
    copy, _ = prepared
    done = prepare_with(copy, {"inputs.sources": [real_source(project), real_source(project)]})
    assert_clear_message(done, "two sources are named 'face-mask-detection'")


@pytest.mark.parametrize("corrections, says", [(None, "corrections.csv: no such label corrections file"),
                                                ("stale", "matches 0 faces of that image")])
def test_bad_label_corrections_are_a_clear_message(prepared, tmp_path, corrections, says):
    copy, _ = prepared
    path = tmp_path / "corrections.csv"
    if corrections == "stale":
        reviewed = pd.read_csv(copy / "data" / "label_corrections.csv")
        reviewed.head(1).assign(x1=reviewed.x1.iloc[0] + 30).to_csv(path, index=False)  # a box on no face
    assert_clear_message(prepare_with(copy, {"prepare.label_corrections": str(path)}), says)


@pytest.fixture(scope="module")
def two_sources(project, inputs, tmp_path_factory):
    """`dvc repro prepare` on the real data set and 100 of its own faces (24 px or more) as an image-level source."""
    crops = sample_face_folders(inputs["dataset"], tmp_path_factory.mktemp("crops") / "crops", 100)
    sources = [real_source(project), {"name": "crops", "path": str(crops), "format": "folders"}]
    changes = {"inputs.root": str(inputs["root"]), "inputs.sources": sources}
    copy = copy_project(project, tmp_path_factory.mktemp("project"), changes)
    done = run([str(BIN / "dvc"), "repro", "prepare"], copy)
    return copy, done


def kept_photo(decisions, image_id):
    """The image standing for `image_id` after de-duplication: itself, or the copy it was removed as a duplicate of."""
    removed = decisions[decisions.action == "duplicate removed"].set_index("image_id")
    kept = removed.reason.str.extract(r"duplicate of (\S+)")[0]
    while image_id in kept.index:
        image_id = kept[image_id]
    return image_id


def test_two_sources_are_merged_and_counted_per_source(two_sources):
    copy, done = two_sources
    assert "prepared 934 of 953 images" in done.stdout
    metrics = json.loads((copy / "reports" / "data.json").read_text())
    real, crops = metrics["sources"]["face-mask-detection"], metrics["sources"]["crops"]
    assert (real["kind"], real["images_in"], real["images_out"], real["duplicates_removed"]) == ("scene", 853, 834, 19)
    assert (crops["kind"], crops["images_in"], crops["images_out"], crops["found_in_scenes"]) == ("face", 100, 100, 100)
    assert sum(crops["faces"].values()) == 100 and sum(s["images"] for s in crops["splits"].values()) == 100
    processed = copy / "data" / "processed"
    manifest = pd.read_csv(processed / "manifest.csv")
    assert manifest.groupby("source").size().to_dict() == {"crops": 100, "face-mask-detection": 834}
    assert (manifest.kind == "face").equals(manifest.source == "crops")
    assert set(pd.read_csv(processed / "decisions.csv").source) == {"face-mask-detection"}
    report = (copy / "reports" / "prepare.ipynb").read_text()
    assert "found inside a scene photo" in report and "crops" in report


def test_face_pictures_are_not_given_to_the_detector(two_sources):
    copy, _ = two_sources
    processed = copy / "data" / "processed"
    manifest = pd.read_csv(processed / "manifest.csv")
    dataset = yaml.safe_load((processed / "dataset.yaml").read_text())
    listed = {line for split in ("train", "val", "test")
              for line in (processed / dataset[split]).read_text().splitlines()}
    assert listed == set("./" + manifest.file[manifest.kind == "scene"])
    assert all((processed / f).is_file() for f in manifest.file[manifest.kind == "face"])  # written for the classifier
    labels = sum(len(p.read_text().splitlines()) for p in processed.glob("labels/*/*.txt"))
    assert labels == manifest.faces.sum()


def test_no_crop_sits_in_another_split_than_its_photo(two_sources):
    copy, _ = two_sources
    processed = copy / "data" / "processed"
    manifest = pd.read_csv(processed / "manifest.csv")
    decisions = pd.read_csv(processed / "decisions.csv")
    split = manifest.set_index("image_id").split
    crops = manifest.image_id[manifest.kind == "face"]
    photos = [kept_photo(decisions, re.search(r"(maksssksksss\d+)_\d+$", c).group(1)) for c in crops]
    assert split[crops].tolist() == split[photos].tolist()
    found = pd.read_csv(processed / "faces_in_scenes.csv")
    assert set(found.picture) == set(crops)
