"""`maskdet predict --ray` as a user runs it, on a local Ray cluster that the command starts: real photos of the data
set in, a Parquet folder out, compared image by image with `Detector`; a rerun predicts nothing again; an actor killed
in the middle of the job is started again by Ray and the job still writes every photo exactly once."""

import os
import shutil
import signal
import subprocess

import numpy as np
import psutil
import pytest
from conftest import BIN, run, wait_until

from maskdet.archive import BLOCK_UNITS, read_results
from maskdet.core import IMAGE_SUFFIXES
from maskdet.inference import Detector

pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")

ACTOR = "MapBatches(DetectorActor)"  # in the process title of Ray Data's actors


def photo_folder(inputs, target, count):
    """`count` real photos of the data set, copied to the folder `target`."""
    target.mkdir()
    files = sorted(p for p in (inputs["dataset"] / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    for photo in files:
        shutil.copy(photo, target / photo.name)
    return sorted(target.iterdir())


def assert_each_photo_once_as_the_detector_sees_it(results, photos, model):
    detector = Detector(model)
    assert sorted(set(results.source)) == sorted(map(str, photos))
    for photo in photos:
        rows = results[results.source == str(photo)]
        expected = detector.predict(photo).to_dicts()
        assert rows.label.dropna().tolist() == [d["label"] for d in expected], photo
        assert len(rows) == max(len(expected), 1), f"{photo}: {len(rows)} rows for {len(expected)} faces"
        boxes = rows.dropna(subset="label")[["x1", "y1", "x2", "y2"]].to_numpy()
        assert np.abs(boxes - np.array([d["box"] for d in expected]).reshape(-1, 4)).max(initial=0) <= 1.0, photo
    assert set(results.model_version) == {detector.version}


def test_predict_on_ray_gives_what_the_detector_gives_and_a_rerun_resumes(model, inputs, tmp_path):
    photos = photo_folder(inputs, tmp_path / "photos", 12)
    out = tmp_path / "results.parquet"
    command = [BIN / "maskdet", "predict", "--ray", tmp_path / "photos", "--out", out, "--model", model,
               "--workers", "2"]
    done = run(command, tmp_path)
    assert_each_photo_once_as_the_detector_sees_it(read_results(out), photos, model)
    assert str(tmp_path / "photos") in done.stdout and f"rows in {out}" in done.stdout, done.stdout
    files = sorted(out.iterdir())
    again = run(command, tmp_path)
    assert sorted(out.iterdir()) == files, "a rerun wrote again what was there"
    assert "0 units of work to predict" in again.stderr, again.stderr[-2000:]


def actors():
    return [p for p in psutil.process_iter(["cmdline"]) if ACTOR in " ".join(p.info["cmdline"] or [])]


def test_an_actor_killed_in_the_middle_of_the_job_leaves_every_photo_written_once(model, inputs, tmp_path):
    photos = photo_folder(inputs, tmp_path / "photos", 12 * BLOCK_UNITS)
    out, log = tmp_path / "results.parquet", tmp_path / "job.log"
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with open(log, "w") as said:
        job = subprocess.Popen([str(BIN / "maskdet"), "predict", "--ray", str(tmp_path / "photos"), "--out",
                                str(out), "--model", str(model)], stdout=said, stderr=subprocess.STDOUT, env=env,
                               cwd=tmp_path)
    try:
        # the first block written: the actor is working through the others
        wait_until(lambda: out.is_dir() and any(out.glob("*.parquet")), "the first results", 600, interval=0.2,
                   alive=job, output=log)
        killed = actors()
        assert killed and job.poll() is None and len(list(out.glob("*.parquet"))) < 12, "the job ended before the kill"
        for actor in killed:
            actor.send_signal(signal.SIGKILL)
        assert job.wait(timeout=900) == 0, log.read_text()[-3000:]
    finally:
        if job.poll() is None:
            job.kill()
    assert_each_photo_once_as_the_detector_sees_it(read_results(out), photos, model)
    assert not any(actor.is_running() for actor in killed)
