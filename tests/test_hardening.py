"""The API under attack and under load, as a client sees it: a real `maskdet serve` (uvicorn) with API keys.

Generated requests from its OpenAPI schema (schemathesis), inputs that used to break it (thin strips, phone photos in
MPO or HEIC), requests over its limits, keys missing or wrong, a model that cannot be loaded, and the memory three
maximal batches of 36 MP photos take.
"""

import io
import shutil
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import httpx
import psutil
import pytest
from conftest import BIN, fill, run, wait_until
from PIL import Image
from test_api import API_KEY, PHOTOS, encoded, running_server

from maskdet.inference import Detector, as_rgb
from maskdet.launch import free_port
from maskdet.predictions import PredictionLog

AUTH = {"Authorization": f"Bearer {API_KEY}"}
FUZZ_REQUESTS = 1000  # generated requests at least, all operations together
MAX_SERVER_RSS = 2 << 30  # bytes: the server's resident memory under three concurrent maximal batches stays below this
LOAD_S = 8  # seconds of concurrent requests before the server is killed
LARGE_SCALE = 14  # a 512 x 366 photo enlarged 14 times: 7168 x 5124, 36.7 MP


@pytest.fixture(scope="module")
def photo(inputs):
    return Image.open(inputs["dataset"] / "images" / PHOTOS[0]).convert("RGB")


@pytest.fixture(scope="module")
def large_jpeg(photo):
    """A real photo enlarged to 36.7 MP, as a phone sends it."""
    return encoded(
        photo.resize((photo.width * LARGE_SCALE, photo.height * LARGE_SCALE), Image.BICUBIC), "JPEG", quality=70
    )


@pytest.fixture(scope="module")
def keyed(project, model, tmp_path_factory):
    """A server with two API keys and the default limits; yields a client sending the key, its URL, its output and
    its prediction log."""
    folder = tmp_path_factory.mktemp("keyed")
    env = {
        "MASKDET_MODEL": str(model),
        "MASKDET_PREDICTION_LOG": str(folder / "predictions.db"),
        "MASKDET_API_KEYS": f"{API_KEY},another-key",
    }
    with running_server(project, env, folder / "output.log") as (_, url):
        with httpx.Client(base_url=url, timeout=120, headers=AUTH) as client:
            yield client, url, folder / "output.log", PredictionLog(folder / "predictions.db")


def test_fuzzing_the_openapi_schema_gets_no_server_error(keyed, record_property):
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, Phase

    _, url, _, _ = keyed
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    statuses, failures = Counter(), []
    for result in schema.get_all_operations():
        operation = result.ok()
        # the POST operations take uploads; the GET ones take no parameters: nothing negative to generate
        uploads = operation.method.upper() == "POST"
        modes = [schemathesis.GenerationMode.POSITIVE, *([schemathesis.GenerationMode.NEGATIVE] if uploads else [])]
        for mode in modes:

            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(
                max_examples=260 if uploads else 20,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def call(case):
                response = case.call(base_url=url, headers=AUTH, timeout=60)
                statuses[response.status_code] += 1
                if response.status_code >= 500:
                    failures.append(f"{case.as_curl_command()} -> {response.status_code} {response.text[:300]}")

            call()
    total = sum(statuses.values())
    record_property("fuzz_requests", total)
    record_property("fuzz_server_errors", len(failures))
    print(f"fuzz: {total} requests, statuses {dict(sorted(statuses.items()))}, {len(failures)} >= 500")
    assert not failures, "\n".join(failures[:5])
    assert total >= FUZZ_REQUESTS, statuses


def test_keys_are_required_checked_and_never_logged(keyed, project, model):
    client, url, output, _ = keyed
    # refused as corrupt once the key is right: no prediction needed
    photo = {"file": ("photo.png", b"\x89PNG\r\n\x1a\n")}
    asked = {
        "no key": client.post("/predict", files=photo, headers={"Authorization": ""}),
        "wrong key": client.post("/predict", files=photo, headers={"Authorization": "Bearer not-the-key"}),
        "not bearer": client.post("/predict", files=photo, headers={"Authorization": f"Basic {API_KEY}"}),
        "metrics without key": client.get("/metrics", headers={"Authorization": ""}),
        "model without key": client.get("/model", headers={"Authorization": ""}),
    }
    for name, answer in asked.items():
        assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Bearer"), name
        assert "Authorization: Bearer <key>" in answer.json()["detail"], name
    assert client.post("/predict", files=photo).status_code == 422  # the right key: the upload is looked at
    assert client.get("/model", headers={"Authorization": "Bearer another-key"}).status_code == 200
    assert client.get("/metrics").status_code == 200
    assert httpx.get(f"{url}/health").json()["status"] == "ok"  # open without a key
    assert httpx.get(f"{url}/docs").status_code == 200
    logged = output.read_text()
    assert '"path": "/predict", "status": 401' in logged  # the access log sees these requests...
    assert API_KEY not in logged and "another-key" not in logged  # ...but never a key


def test_phone_photos_are_read_or_refused_clearly_and_thin_strips_are_a_4xx(keyed, model, photo):
    client, _, output, _ = keyed
    mpo = encoded(photo, "MPO", save_all=True, append_images=[photo.rotate(180)])
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    answer = client.post("/predict", files={"file": ("phone.jpg", mpo, "image/jpeg")})
    first_frame = Detector(model).predict(as_rgb(Image.open(io.BytesIO(encoded(photo, "JPEG"))))).to_dicts()
    assert answer.status_code == 200 and answer.json()["detections"] == first_frame and len(first_frame) >= 2
    avif = client.post("/predict", files={"file": ("photo.avif", encoded(photo, "AVIF"), "image/avif")})
    assert avif.status_code == 200 and avif.json()["image"] == {"width": photo.width, "height": photo.height}, avif.text
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(4000)
    refused = {
        "8x10300": ("strip.png", encoded(Image.new("RGB", (8, 10300), "white"), "PNG"), 422),
        "10300x8": ("strip.png", encoded(Image.new("RGB", (10300, 8), "white"), "PNG"), 422),
        "HEIC": ("IMG_0001.HEIC", heic, 415),
    }
    for name, (filename, data, status) in refused.items():
        answer = client.post("/predict", files={"file": (filename, data)})
        assert answer.status_code == status, (name, answer.text)
        print(name, answer.status_code, answer.json()["detail"])
    assert "convert the photo to JPEG" in answer.json()["detail"]
    assert client.get("/health").json()["status"] == "ok" and "Traceback" not in output.read_text()


def test_a_large_jpeg_is_answered_in_its_own_pixels(keyed, model, large_jpeg):
    client, _, _, _ = keyed
    answer = client.post("/predict", files={"file": ("large.jpg", large_jpeg)})
    assert answer.status_code == 200, answer.text
    found, size = answer.json()["detections"], (7168, 5124)
    assert answer.json()["image"] == {"width": size[0], "height": size[1]}
    expected = Detector(model).predict(as_rgb(Image.open(io.BytesIO(large_jpeg)))).to_dicts()  # decoded in full
    tolerance = 3 * max(size) / 640  # 3 pixels of the detector's 640-pixel input
    assert len(found) == len(expected) >= 2
    for d in found:
        assert any(
            d["label"] == e["label"] and max(abs(a - b) for a, b in zip(d["box"], e["box"])) <= tolerance
            for e in expected
        ), (d, expected)


def test_a_request_over_the_pixel_budget_is_refused(keyed):
    client, _, _, _ = keyed
    # 26.4 MP each, under the 40 MP of one image; a PNG decodes in full: 5 of them decode to 132 MP, over 120 MP
    png = encoded(Image.new("RGB", (6000, 4400), "grey"), "PNG")
    answer = client.post("/predict/batch", files=[("files", (f"{i}.png", png)) for i in range(5)])
    assert answer.status_code == 413 and "decode to 132,000,000 pixels" in answer.json()["detail"], answer.text


def test_past_the_queue_a_request_gets_503_with_retry_after(project, model, large_jpeg, tmp_path):
    env = {
        "MASKDET_MODEL": str(model),
        "MASKDET_PREDICTION_LOG": str(tmp_path / "predictions.db"),
        "MASKDET_MAX_INFERENCES": "1",
        "MASKDET_MAX_WAITING": "1",
        "MASKDET_MAX_UPLOAD_MB": "40",
    }
    batch = [("files", (f"{i}.jpg", large_jpeg)) for i in range(8)]
    with running_server(project, env, tmp_path / "output.log") as (_, url):
        with httpx.Client(base_url=url, timeout=300) as client, ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: client.post("/predict/batch", files=batch), range(6)))
            statuses = Counter(a.status_code for a in answers)
            print(
                "6 concurrent batches:",
                dict(statuses),
                [a.json()["detail"] for a in answers if a.status_code == 503][:1],
            )
            assert set(statuses) == {200, 503} and statuses[200] >= 1, statuses
            assert all(int(a.headers["retry-after"]) >= 1 for a in answers if a.status_code == 503)
            assert client.get("/health").json()["status"] == "ok"
            assert client.post("/predict/batch", files=batch).status_code == 200


LOCKED_S = 20  # how long the prediction log stays locked


def test_a_locked_prediction_log_degrades_health_but_fails_no_prediction(keyed, photo):
    client, _, output, log = keyed
    png, before = encoded(photo, "PNG"), len(log)
    with closing(sqlite3.connect(log.path, isolation_level=None)) as lock:
        lock.execute("BEGIN EXCLUSIVE")  # another process holds the log's write lock, for LOCKED_S
        locked, answers = time.monotonic(), []
        while time.monotonic() - locked < LOCKED_S:
            answers.append(client.post("/predict", files={"file": ("photo.png", png)}))
            health = client.get("/health").json()
            assert health["status"] == "degraded" and "locked" in health["reason"], health
        assert [a.status_code for a in answers] == [200] * len(answers), [a.text for a in answers]
        metrics = client.get("/metrics").text
        assert f"maskdet_log_queued {len(answers)}.0" in metrics and "maskdet_log_ok 0.0" in metrics
        lock.execute("ROLLBACK")
    wait_until(lambda: client.get("/health").json()["status"] == "ok", "the queued rows written, the lock gone", 60)
    assert len(log) == before + len(answers) and "maskdet_log_lost_rows_total 0.0" in client.get("/metrics").text
    assert "Traceback" not in output.read_text()


def test_a_model_that_cannot_be_loaded_is_a_503_with_its_reason(project, model, tmp_path):
    # `maskdet serve` refuses such a model before it starts; the app run by uvicorn itself (as a deployment may) stays
    # up and says why
    broken = tmp_path / "model"
    broken.mkdir()
    shutil.copy(model / "model.json", broken)
    (broken / "model.onnx").write_bytes((model / "model.onnx").read_bytes()[:100_000])  # truncated
    env = {"MASKDET_MODEL": str(broken / "model.onnx"), "MASKDET_PREDICTION_LOG": str(tmp_path / "predictions.db")}
    uvicorn = (BIN / "uvicorn", "--factory", "maskdet.api:create_app")
    with running_server(project, env, tmp_path / "output.log", uvicorn) as (process, url):
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable", health.text
        detail = health.json()["detail"]
        assert "model.onnx" in detail and "restart" in detail
        for answer in (
            httpx.get(f"{url}/model"),
            httpx.post(f"{url}/predict", files={"file": ("a.png", encoded(Image.new("RGB", (64, 64)), "PNG"))}),
        ):
            assert (answer.status_code, answer.json()["detail"]) == (503, detail)
        assert process.poll() is None


def peak_rss(process: psutil.Process, stop: threading.Event, peak: list) -> None:
    """Sample the resident memory of `process` every 50 ms into `peak[0]` until `stop` is set."""
    while not stop.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.05)


def test_memory_stays_bounded_under_three_maximal_batches(project, model, large_jpeg, tmp_path):
    # The body limit is raised so that the batches are the largest the pixel limits allow: 16 images of 36.7 MP each
    env = {
        "MASKDET_MODEL": str(model),
        "MASKDET_PREDICTION_LOG": str(tmp_path / "predictions.db"),
        "MASKDET_MAX_UPLOAD_MB": "40",
    }
    batch = [("files", (f"{i}.jpg", large_jpeg)) for i in range(16)]
    with running_server(project, env, tmp_path / "output.log") as (process, url):
        server = psutil.Process(process.pid)
        before, peak, stop = server.memory_info().rss, [0], threading.Event()
        sampler = threading.Thread(target=peak_rss, args=(server, stop, peak))
        sampler.start()
        try:
            with httpx.Client(base_url=url, timeout=300) as client, ThreadPoolExecutor(3) as pool:
                answers = list(pool.map(lambda _: client.post("/predict/batch", files=batch), range(3)))
        finally:
            stop.set()
            sampler.join()
    print(
        f"server RSS: {before / 2**20:.0f} MiB idle, {peak[0] / 2**20:.0f} MiB at most under 3 x 16 x 36.7 MP "
        f"(bound {MAX_SERVER_RSS / 2**20:.0f} MiB)"
    )
    assert [a.status_code for a in answers] == [200] * 3, [a.text[:200] for a in answers]
    assert all(r["image"] == {"width": 7168, "height": 5124} for a in answers for r in a.json()["results"])
    assert peak[0] < MAX_SERVER_RSS


def test_serve_beyond_loopback_without_a_key_is_refused_in_one_line(project, model):
    done = run(
        [BIN / "maskdet", "serve", "--host", "0.0.0.0", "--port", free_port(), "--model", model],
        project.root,
        check=False,
        timeout=120,
        extra_env={"MASKDET_API_KEYS": "", "MASKDET_API_KEYS_FILE": ""},
    )
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "MASKDET_API_KEYS" in done.stderr


def test_a_full_disk_degrades_health_but_fails_no_prediction(project, model, photo, tiny_disk, tmp_path):
    log = tiny_disk / "predictions.db"
    env = {"MASKDET_MODEL": str(model), "MASKDET_PREDICTION_LOG": str(log), "MASKDET_API_KEYS": API_KEY}
    png = encoded(photo, "PNG")
    with running_server(project, env, tmp_path / "output.log") as (_, url), \
            httpx.Client(base_url=url, timeout=120, headers=AUTH) as client:
        assert client.post("/predict", files={"file": ("photo.png", png)}).status_code == 200
        fill(tiny_disk / "filler")
        answers = [client.post("/predict", files={"file": ("photo.png", png)}) for _ in range(3)]
        assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
        health = client.get("/health").json()
        assert health["status"] == "degraded" and "disk full" in health["reason"], health
        (tiny_disk / "filler").unlink()
        wait_until(lambda: client.get("/health").json()["status"] == "ok", "/health ok", 60)
        assert len(PredictionLog(log)) == 4
    assert "Traceback" not in (tmp_path / "output.log").read_text()


def test_kill_9_under_load_keeps_every_answered_prediction(project, model, photo, tmp_path):
    log = tmp_path / "predictions.db"
    env = {"MASKDET_MODEL": str(model), "MASKDET_PREDICTION_LOG": str(log), "MASKDET_API_KEYS": API_KEY}
    png, answered, stop = encoded(photo, "PNG"), [], threading.Event()

    def client_loop(url):
        with httpx.Client(base_url=url, timeout=60, headers=AUTH) as client:
            while not stop.is_set():
                try:
                    answer = client.post("/predict", files={"file": ("photo.png", png)})
                except httpx.TransportError:
                    return  # the server died under this request: it was never answered
                if answer.status_code == 200:
                    answered.append(answer.headers["x-request-id"])

    with running_server(project, env, tmp_path / "output.log") as (process, url):
        with ThreadPoolExecutor(4) as clients:
            for _ in range(4):
                clients.submit(client_loop, url)
            time.sleep(LOAD_S)
            process.kill()
            process.wait(timeout=30)
            stop.set()
    with closing(sqlite3.connect(log)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        logged = {row[0] for row in db.execute("SELECT request_id FROM predictions")}
    missing = set(answered) - logged
    assert answered and not missing, f"{len(missing)} of {len(answered)} answered predictions are not in the log"
    print(f"kill -9 after {LOAD_S} s of 4 clients: {len(answered)} answered, all in the log, integrity ok")
