"""The HTTP API as a client sees it: a real `maskdet serve` (uvicorn) on a free 127.0.0.1 port.

The model (the `model` fixture of conftest.py) is made from the starting face detector and an untrained mask
classifier, exported to ONNX and OpenVINO as the export stage does: real faces, real backends, no training needed.
"""

import io
import os
import struct
import subprocess
import zlib
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from conftest import BIN, wait_until
from PIL import Image

from maskdet.core import CLASSES, load_params
from maskdet.inference import Detector, as_rgb
from maskdet.launch import free_port
from maskdet.predictions import PredictionLog

PHOTOS = ("maksssksksss0.png", "maksssksksss1.png", "maksssksksss4.png")


def encoded(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


API_KEY = "key-for-the-tests-7f3a9c"  # distinctive, so that a test can look for it in the server's output


@contextmanager
def running_server(project, env, output, command=(BIN / "maskdet", "serve")):
    """A real server (`command`, by default `maskdet serve`) on a free 127.0.0.1 port with `env` added to its
    environment and its output written to `output`; yields (process, base URL) once `/health` answers (200, or 503 for
    a model that cannot be loaded)."""
    port = free_port()
    with open(output, "w") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=project.root,
            env=os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"} | env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/health", timeout=2).status_code in (200, 503), "the API's /health", 120,
                   alive=process, output=output)
        yield process, url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(project, model, tmp_path_factory):
    """The service as deployed: with an API key (the client sends it), its output captured."""
    log = tmp_path_factory.mktemp("log") / "predictions.db"
    env = {
        "MASKDET_MODEL": str(model),
        "MASKDET_PREDICTION_LOG": str(log),
        "MASKDET_MAX_UPLOAD_MB": "5",
        "MASKDET_MAX_BATCH": "4",
        "MASKDET_API_KEYS": f"an-old-key,{API_KEY}",
    }
    output = tmp_path_factory.mktemp("server") / "output.log"
    with running_server(project, env, output) as (_, url):
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            yield client, PredictionLog(log), output


@pytest.fixture(scope="module")
def photos(inputs):
    return {name: (inputs["dataset"] / "images" / name).read_bytes() for name in PHOTOS}


def test_a_real_photo_gets_the_same_detections_as_the_detector(server, model, photos):
    client, log, _ = server
    answer = client.post(
        "/predict", files={"file": ("photo.png", photos[PHOTOS[0]], "image/png")}, headers={"X-Request-ID": "same-1"}
    )
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "same-1"
    body = answer.json()
    expected = Detector(model).predict(as_rgb(Image.open(io.BytesIO(photos[PHOTOS[0]])))).to_dicts()
    assert body["detections"] == expected and len(expected) >= 2
    assert body["image"] == {"width": 512, "height": 366}
    assert body["model"]["backend"] == "openvino" and body["latency_ms"] > 0
    row = log.read().set_index("request_id").loc["same-1"]
    assert row.detections == expected and row.faces == len(expected) and row.width == 512
    assert log.image(row.id) is None, "images are stored only with MASKDET_STORE_IMAGES=1"


def test_a_batch_gives_one_result_per_image_in_order(server, photos):
    client, log, _ = server
    singles = [client.post("/predict", files={"file": (n, photos[n])}).json()["detections"] for n in PHOTOS]
    answer = client.post(
        "/predict/batch", files=[("files", (n, photos[n])) for n in PHOTOS], headers={"X-Request-ID": "batch-1"}
    )
    assert answer.status_code == 200
    assert [r["detections"] for r in answer.json()["results"]] == singles
    assert [r["image"]["width"] for r in answer.json()["results"]] == [
        Image.open(io.BytesIO(photos[n])).width for n in PHOTOS
    ]
    logged = log.read()
    assert [f"batch-1/{i}" for i in range(3)] == [r for r in logged.request_id if r.startswith("batch-1")]


def bad_uploads(photo_bytes):
    """Each bad request, as httpx keyword arguments for the endpoint, and its documented status."""
    photo = Image.open(io.BytesIO(photo_bytes)).convert("RGB")
    jpeg = encoded(photo, "JPEG")
    frames = [photo.resize((64, 64)), photo.resize((64, 64)).rotate(90)]
    zero = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0))
        + png_chunk(b"IEND", b"")
    )
    noise = np.random.default_rng(0).integers(0, 256, (1800, 1800, 3), dtype=np.uint8)
    return {
        "empty body": ("/predict", {}, 422),
        "no file field": ("/predict", {"data": {"image": "photo.png"}, "files": {"other": ("x.txt", b"x")}}, 422),
        "empty file": ("/predict", {"files": {"file": ("empty.png", b"")}}, 400),
        "text file": ("/predict", {"files": {"file": ("notes.txt", b"just some text\n" * 10, "text/plain")}}, 415),
        "truncated JPEG": ("/predict", {"files": {"file": ("cut.jpg", jpeg[: len(jpeg) // 2], "image/jpeg")}}, 422),
        "0x0 image": ("/predict", {"files": {"file": ("zero.png", zero, "image/png")}}, 422),
        "1x1 image": (
            "/predict",
            {"files": {"file": ("dot.png", encoded(photo.resize((1, 1)), "PNG"), "image/png")}},
            422,
        ),
        "20000x20000 PNG bomb": (
            "/predict",
            {"files": {"file": ("bomb.png", encoded(Image.new("L", (20000, 20000)), "PNG"))}},
            413,
        ),
        "over-size upload": ("/predict", {"files": {"file": ("big.png", encoded(Image.fromarray(noise), "PNG"))}}, 413),
        "too many files": ("/predict/batch", {"files": [("files", (f"{i}.png", photo_bytes)) for i in range(5)]}, 413),
        "SVG": (
            "/predict",
            {
                "files": {
                    "file": (
                        "x.svg",
                        b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>',
                        "image/svg+xml",
                    )
                }
            },
            415,
        ),
        "animated GIF": (
            "/predict",
            {"files": {"file": ("a.gif", encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]))}},
            415,
        ),
        "bad file in a batch": (
            "/predict/batch",
            {"files": [("files", ("a.png", photo_bytes)), ("files", ("b.txt", b"text"))]},
            415,
        ),
    }


def test_every_bad_upload_gets_its_4xx_and_the_service_keeps_serving(server, photos):
    client, log, output = server
    good = {"files": {"file": ("photo.png", photos[PHOTOS[1]])}}
    before = len(log)
    for name, (endpoint, request, status) in bad_uploads(photos[PHOTOS[0]]).items():
        answer = client.post(endpoint, **request)
        assert answer.status_code == status, (name, answer.status_code, answer.text)
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and len(detail) > 20, (name, detail)
        assert client.post("/predict", **good).status_code == 200, f"no good answer after {name}"
    assert len(log) == before + len(bad_uploads(photos[PHOTOS[0]]))
    assert "Traceback" not in output.read_text()


def test_model_metrics_health_and_docs(server, photos, project):
    client, _, _ = server
    info = client.get("/model").json()
    assert info["name"] == "maskdet" and info["classes"] == list(CLASSES) and info["backend"] == "openvino"
    assert set(info["thresholds"]) == set(CLASSES) and len(info["version"]) == 12
    assert info["detector_sizes"] == load_params("model", project)["detector_sizes"]  # the passes travel with the model
    assert client.get("/health").json()["status"] == "ok"
    client.post("/predict", files={"file": ("photo.png", photos[PHOTOS[2]])})
    metrics = client.get("/metrics").text
    served = [
        line
        for line in metrics.splitlines()
        if line.startswith('maskdet_requests_total{endpoint="/predict",status="200"}')
    ]
    assert served and float(served[0].split()[-1]) >= 1
    assert (
        "maskdet_request_latency_seconds_bucket" in metrics and 'maskdet_detections_total{label="with_mask"}' in metrics
    )
    assert "maskdet_compliance_rate " in metrics
    schema = client.get("/openapi.json").json()
    assert {"/predict", "/predict/batch", "/model", "/metrics", "/health"} <= set(schema["paths"])
    assert "examples" in str(schema["components"]["schemas"]["Prediction"])
    assert client.get("/docs").status_code == 200


def test_serve_refuses_a_missing_model_in_one_line(project, tmp_path):
    done = subprocess.run(
        [BIN / "maskdet", "serve", "--model", tmp_path / "none.onnx", "--port", str(free_port())],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "not found" in done.stderr and "Traceback" not in done.stderr
