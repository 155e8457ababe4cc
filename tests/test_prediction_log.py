"""The prediction log against real failures: another process holding its lock, a full file system, a full queue,
retention, and `kill -9` of a process writing under load. Real SQLite files, real processes, a real tmpfs."""
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from conftest import fill, wait_until

from maskdet import log_writer
from maskdet.detections import Detections
from maskdet.log_writer import LogWriter
from maskdet.predictions import PredictionLog, log_time, prediction_row
from maskdet.readers import load_rgb


@pytest.fixture(scope="module")
def photo_path(inputs):
    return inputs["dataset"] / "images" / "maksssksksss0.png"


@pytest.fixture(scope="module")
def row(photo_path):
    """A log row of a real photo, its image stored (about 30 kB)."""
    return prediction_row(np.asarray(load_rgb(photo_path)), Detections.empty(), 9.0, store_image=True)


def requests(row, *ids):
    return [dict(row, request_id=i) for i in ids]


def integrity(log):
    with closing(log.connect()) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def hold_lock(path, seconds):
    """Another Python process that holds the log's write lock (BEGIN EXCLUSIVE) for `seconds`, once it has it."""
    code = (f"import sqlite3, time; db = sqlite3.connect({str(path)!r}, isolation_level=None); "
            f"db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep({seconds}); db.execute('COMMIT')")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_lock_held_by_another_process(tmp_path, row):
    log = PredictionLog(tmp_path / "predictions.db")
    writer = LogWriter(log, capacity=100, retention_days=0)
    holder = hold_lock(log.path, 20)
    try:
        for i in range(20):
            writer.submit(requests(row, f"r{i}"))
            time.sleep(0.4)  # spread the submits over the writer's retries
        assert holder.poll() is None, "a submit waited for the other process to release its lock"
        status = writer.status()
        assert (status["ok"], status["queued"], status["lost_rows"]) == (False, 20, 0)
        assert status["failed_writes"] >= 2  # the first submit, then the writer's retries
        assert f"prediction log {log.path} locked by another writer: 20 rows waiting" == status["reason"]
        assert len(log) == 0
        holder.wait(timeout=60)
        wait_until(lambda: writer.status()["ok"], "the writer ok again", 30, interval=0.05)
        assert log.read().request_id.tolist() == [f"r{i}" for i in range(20)]
        assert {k: v for k, v in writer.status().items() if k != "failed_writes"} == \
            {"ok": True, "reason": None, "queued": 0, "lost_rows": 0}
    finally:
        holder.kill()
        writer.close()


def test_full_file_system(tiny_disk, row):
    log = PredictionLog(tiny_disk / "logs" / "predictions.db")
    writer = LogWriter(log, capacity=5, retention_days=0)
    try:
        writer.submit(requests(row, "before"))
        fill(tiny_disk / "filler")
        for i in range(8):
            writer.submit(requests(row, f"full{i}"))
        status = writer.status()
        assert (status["ok"], status["queued"], status["lost_rows"]) == (False, 5, 3)
        assert status["reason"] == (f"prediction log {log.path} disk full: 5 rows waiting; "
                                    "its queue is full (5 rows), new rows are lost")
        (tiny_disk / "filler").unlink()
        wait_until(lambda: writer.status()["ok"], "the writer ok again", 30, interval=0.05)
        assert log.read().request_id.tolist() == ["before"] + [f"full{i}" for i in range(5)]
        assert (writer.status()["lost_rows"], integrity(log)) == (3, "ok")
    finally:
        writer.close()


def test_removed_folder_is_made_again(tmp_path, row):
    log = PredictionLog(tmp_path / "logs" / "predictions.db")
    writer = LogWriter(log, capacity=10, retention_days=0)
    shutil.rmtree(tmp_path / "logs")
    writer.submit(requests(row, "after_removal"))
    wait_until(lambda: writer.status()["ok"], "the writer ok again", 30, interval=0.05)
    assert log.read().request_id.tolist() == ["after_removal"]
    assert writer.status()["failed_writes"] >= 1
    writer.close()


def test_queue_overflow_counts_lost_rows(tmp_path, row):
    log = PredictionLog(tmp_path / "predictions.db")
    writer = LogWriter(log, capacity=5, retention_days=0)
    holder = sqlite3.connect(log.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    writer.submit(requests(row, "a0", "a1", "a2"))
    writer.submit(requests(row, "b0", "b1", "b2", "b3"))
    writer.submit(requests(row, "c0"))
    status = writer.status()
    assert (status["queued"], status["lost_rows"]) == (5, 3)
    holder.execute("COMMIT")
    holder.close()
    wait_until(lambda: writer.status()["ok"], "the writer ok again", 30, interval=0.05)
    writer.submit(requests(row, "d0"))
    assert log.read().request_id.tolist() == ["a0", "a1", "a2", "b0", "b1", "d0"]
    assert writer.status()["lost_rows"] == 3
    writer.close()


def aged(row, days, request_id):
    return dict(row, request_id=request_id, time=log_time(datetime.now(UTC) - timedelta(days=days)))


def test_prune_deletes_old_rows_and_their_images(tmp_path, row):
    log = PredictionLog(tmp_path / "predictions.db")
    log.append([aged(row, 40, f"old{i}") for i in range(30)] + [aged(row, 30.01, "just_old")]
               + [aged(row, 29.99, "just_kept")] + [aged(row, 0, f"new{i}") for i in range(5)])
    frame = log.read()
    ids = dict(zip(frame.request_id, frame.id))
    size = os.path.getsize(log.path)
    assert [log.prune(0), log.prune(-3)] == [0, 0]
    assert log.prune(30) == 31
    assert log.read().request_id.tolist() == ["just_kept"] + [f"new{i}" for i in range(5)]
    assert log.image(ids["old0"]) is None and log.image(ids["just_old"]) is None
    assert log.image(ids["just_kept"]) is not None
    assert os.path.getsize(log.path) < size / 3  # the freed pages went back to the file system
    assert integrity(log) == "ok"


def test_writer_applies_the_retention(tmp_path, row, monkeypatch):
    monkeypatch.setattr(log_writer, "RETENTION_INTERVAL_S", 0.5)
    log = PredictionLog(tmp_path / "predictions.db")
    log.append([aged(row, 40, "old"), aged(row, 10, "recent")])
    writer = LogWriter(log, capacity=10, retention_days=30)
    try:
        wait_until(lambda: log.read().request_id.tolist() == ["recent"], "only the recent row left", 30, interval=0.05)
        writer.submit([aged(row, 31, "late_old")] + requests(row, "now"))
        wait_until(lambda: log.read().request_id.tolist() == ["recent", "now"], "the row written", 30, interval=0.05)
    finally:
        writer.close()


CHILD = textwrap.dedent("""
    import os, sys, threading
    import numpy as np
    from maskdet.readers import load_rgb
    from maskdet.detections import Detections
    from maskdet.log_writer import LogWriter
    from maskdet.predictions import PredictionLog, prediction_row, utc_now

    writer = LogWriter(PredictionLog(sys.argv[1]), capacity=1000, retention_days=30)
    row = prediction_row(np.asarray(load_rgb(sys.argv[2])), Detections.empty(), 9.0, store_image=True)

    def work(thread):
        for i in range(1_000_000):
            request_id = f"{thread}-{i}"
            writer.submit([dict(row, request_id=request_id, time=utc_now())])
            os.write(1, f"{request_id}\\n".encode())

    for thread in range(4):
        threading.Thread(target=work, args=(thread,)).start()
""")


def test_kill_9_under_load_loses_no_submitted_row(tmp_path, photo_path):
    path = tmp_path / "predictions.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(photo_path)], stdout=subprocess.PIPE)
    submitted = []
    try:
        while len(submitted) < 400:
            line = child.stdout.readline()
            assert line, "the writing process ended early"
            submitted.append(line)
        os.kill(child.pid, signal.SIGKILL)
        submitted += child.stdout.readlines()
    finally:
        child.kill()
        child.wait()
    answered = [line.decode().strip() for line in submitted if line.endswith(b"\n")]
    log = PredictionLog(path)
    assert integrity(log) == "ok"
    assert set(answered) <= set(log.read().request_id)
