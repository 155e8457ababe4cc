"""The Voila dashboards in a real browser: `maskdet dashboard` on a free port, driven by Playwright (Debian's Chromium).

The model is made from the starting face detector (the `model` fixture of conftest.py); the prediction log is filled
with real predictions of data set photos; Chromium's fake camera plays a clip made of data set photos. Screenshots and
the measured figures (first render times, webcam round trip and frames per second) go to test-artifacts/.
"""

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import cv2
import pytest
from conftest import BIN, dashboard_root, free_port

from maskdet.core import load_params
from maskdet.inference import Detector, as_rgb
from maskdet.monitoring import drift_decision, folder_features, write_decision
from maskdet.predictions import PredictionLog

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
PHOTOS = ("maksssksksss0.png", "maksssksksss1.png", "maksssksksss4.png")
RENDER_LIMIT_S = 10
FIRST_RENDER_LIMIT_S = 30  # the very first kernel of a fresh server also warms Python's caches on 2 busy cores
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FIGURES = {}

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is missing: run `make browser`")


def y4m_clip(images, path, size=(640, 480), frames_each=5):
    """A YUV4MPEG2 4:2:0 clip (5 frames/s) of `images`, each for `frames_each` frames, for Chromium's fake camera."""
    width, height = size
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F5:1 Ip A1:1 C420jpeg\n".encode())
        for image in images:
            bgr = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), size)
            planar = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes()  # Y, then U and V at quarter size
            for _ in range(frames_each):
                out.write(b"FRAME\n" + planar)
    return path


@pytest.fixture(scope="module")
def filled(project, inputs, model, tmp_path_factory):
    """A project with a prediction log of a dozen real photos (every other one stored) and a real drift decision."""
    root = dashboard_root(project, tmp_path_factory.mktemp("filled"))
    images = sorted((inputs["dataset"] / "images").glob("*.png"))
    detector, log = Detector(model), PredictionLog(root / "predictions.db")
    for i, file in enumerate(images[:12]):
        rgb = as_rgb(file)
        start = time.perf_counter()
        found = detector.predict(rgb)
        log.record(rgb, found, (time.perf_counter() - start) * 1000, request_id=f"test-{i}", source="test",
                   model_version=detector.version, backend=detector.backend, store_image=i % 2 == 0)
    params = load_params("drift", project) | {"min_window": 5, "columns": ["width", "height", "brightness", "contrast"]}
    result = drift_decision(folder_features(images[:12]), folder_features(images[100:112]), params)
    write_decision(result, root / "reports")
    return root


def start_dashboard(root, env):
    port = free_port()
    env = os.environ | env | {"MASKDET_ROOT": str(root), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTEST_CURRENT_TEST", None)
    output = root / "voila.log"
    with open(output, "w") as out:
        process = subprocess.Popen([BIN / "maskdet", "dashboard", "--port", str(port)], cwd=root, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, output.read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.3)
    else:
        pytest.fail(f"Voila did not listen within 90 s:\n{output.read_text()}")
    return process, url, output


def stop_dashboard(process, output):
    os.killpg(process.pid, 15)  # Voila and its kernels
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
    assert "Traceback" not in output.read_text(), output.read_text()[-3000:]


@pytest.fixture(scope="module")
def server(filled, model):
    process, url, output = start_dashboard(filled, {"MASKDET_MODEL": str(model),
                                                    "MASKDET_PREDICTION_LOG": str(filled / "predictions.db"),
                                                    "MASKDET_STORE_IMAGES": "1"})
    yield url
    stop_dashboard(process, output)


@pytest.fixture(scope="module")
def bare_server(project, tmp_path_factory):
    """A clean clone's situation: no model, no predictions, no reports."""
    root = dashboard_root(project, tmp_path_factory.mktemp("bare"))
    process, url, output = start_dashboard(root, {"MASKDET_MODEL": str(root / "models"),
                                                  "MASKDET_PREDICTION_LOG": str(root / "logs" / "predictions.db")})
    yield url
    stop_dashboard(process, output)


@pytest.fixture(scope="module")
def browser(inputs, tmp_path_factory):
    clip = y4m_clip([as_rgb(inputs["dataset"] / "images" / name) for name in PHOTOS],
                    tmp_path_factory.mktemp("camera") / "clip.y4m")
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={clip}"])
        yield browser
        browser.close()
    (ARTIFACTS / "dashboards.json").write_text(json.dumps(FIGURES, indent=2) + "\n")


def open_page(browser, url, ready, name, limit=RENDER_LIMIT_S, permissions=("camera",)):
    """Open a dashboard, wait for the element `ready`; returns the page, the console errors and the render time."""
    context = browser.new_context(viewport={"width": 1280, "height": 1800}, permissions=list(permissions))
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(f"{m.text} ({m.location.get('url')})") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    start = time.monotonic()
    page.goto(url, timeout=60_000)
    page.wait_for_selector(ready, timeout=60_000)
    seconds = time.monotonic() - start
    FIGURES[f"first render {name} (s)"] = round(seconds, 2)
    assert seconds <= limit, f"{name} took {seconds:.1f} s to render"
    return page, errors


def test_the_monitor_shows_numbers_plots_model_and_drift_without_console_errors(server, browser):
    page, errors = open_page(browser, f"{server}/voila/render/monitor.ipynb", ".maskdet-numbers", "monitor",
                             FIRST_RENDER_LIMIT_S)
    requests = page.locator('.maskdet-tile[data-name="requests"] div').first.inner_text()
    assert requests == "12"
    assert int(page.locator('.maskdet-tile[data-name="faces"] div').first.inner_text()) > 12
    assert "ms" in page.locator('.maskdet-tile[data-name="latency p50"]').inner_text()
    charts = page.locator("img").evaluate_all("(images) => images.filter((i) => i.naturalWidth > 600).length")
    thumbnails = page.locator("img").evaluate_all("(images) => images.filter((i) => i.naturalWidth <= 320).length")
    assert charts >= 1 and thumbnails == 6, (charts, thumbnails)
    assert page.locator(".maskdet-drift-verdict").inner_text().strip().startswith(("drift", "no drift"))
    assert "openvino" in page.get_by_text("backend", exact=True).locator("xpath=..").inner_text()
    assert page.get_by_text("no evaluation metrics yet").is_visible()
    page.get_by_role("button", name="Refresh").click()
    page.wait_for_timeout(1500)
    assert page.locator('.maskdet-tile[data-name="requests"] div').first.inner_text() == "12"
    page.screenshot(path=ARTIFACTS / "monitor.png", full_page=True)
    assert "Traceback" not in page.content()
    assert not errors, errors


def test_the_webcam_page_draws_labelled_boxes_on_the_fake_camera(server, browser, filled):
    before = len(PredictionLog(filled / "predictions.db"))
    page, errors = open_page(browser, f"{server}/voila/render/webcam.ipynb", ".maskdet-camera-start", "webcam")
    assert "version" in page.locator(".maskdet-ok").first.inner_text()
    page.locator(".maskdet-camera-start").click()
    camera = page.locator(".maskdet-camera")
    start = time.monotonic()
    page.wait_for_function("() => Number(document.querySelector('.maskdet-camera').dataset.boxes || 0) > 0",
                           timeout=20_000)
    FIGURES["webcam first boxes after start (s)"] = round(time.monotonic() - start, 2)
    labels = camera.get_attribute("data-labels").split(",")
    assert set(labels) <= {"with_mask", "without_mask", "mask_weared_incorrect"} and labels != [""]
    frames = int(camera.get_attribute("data-frames"))
    page.wait_for_timeout(5000)
    assert int(camera.get_attribute("data-frames")) > frames
    assert int(camera.get_attribute("data-faces")) > 0 and camera.get_attribute("data-compliance").endswith("%")
    FIGURES["webcam frames per second, 5 asked"] = float(camera.get_attribute("data-fps"))
    FIGURES["webcam round trip, 5 asked (ms)"] = float(camera.get_attribute("data-latency"))
    FIGURES["webcam model latency (ms)"] = float(camera.get_attribute("data-model-latency"))
    readout = page.locator(".widget-slider", has_text="Frames/s").locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("15")
    page.keyboard.press("Enter")
    page.wait_for_timeout(6000)  # the frame rate is measured over the last 5 s
    FIGURES["webcam frames per second, 15 asked"] = float(camera.get_attribute("data-fps"))
    FIGURES["webcam round trip, 15 asked (ms)"] = float(camera.get_attribute("data-latency"))
    painted = page.locator(".maskdet-camera-view").evaluate(
        "(c) => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
        " for (let i = 0; i < d.length; i += 4) n += d[i] + d[i + 1] + d[i + 2] > 30; return n; }")
    assert painted > 10_000  # the video is drawn, not a blank canvas
    page.screenshot(path=ARTIFACTS / "webcam.png", full_page=True)
    page.locator(".maskdet-camera-stop").click()
    assert "frames" in page.locator(".maskdet-camera-stats").inner_text()
    logged = PredictionLog(filled / "predictions.db").read()
    assert len(logged) > before and "dashboard:webcam" in set(logged.source)
    assert not errors, errors


def test_a_denied_camera_is_a_message(server, browser):
    page, errors = open_page(browser, f"{server}/voila/render/webcam.ipynb", ".maskdet-camera-start", "webcam denied",
                             permissions=())
    page.evaluate("() => { navigator.mediaDevices.getUserMedia = () => Promise.reject("
                  "new DOMException('Permission denied', 'NotAllowedError')); }")
    page.locator(".maskdet-camera-start").click()
    error = page.locator(".maskdet-camera-error")
    error.wait_for(state="visible", timeout=10_000)
    assert "Camera permission denied" in error.inner_text()
    page.screenshot(path=ARTIFACTS / "webcam-denied.png", full_page=True)
    assert not errors, errors


def test_no_model_and_an_empty_log_are_readable_messages(bare_server, browser):
    page, errors = open_page(browser, f"{bare_server}/voila/render/monitor.ipynb", ".maskdet-message", "monitor empty",
                             FIRST_RENDER_LIMIT_S)
    assert page.get_by_text("no predictions yet").is_visible()
    assert page.get_by_text("no drift report yet: run `maskdet drift`").is_visible()
    assert page.get_by_text("no serving model").is_visible()
    page.screenshot(path=ARTIFACTS / "monitor-empty.png", full_page=True)
    assert "Traceback" not in page.content() and not errors, errors
    page, errors = open_page(browser, f"{bare_server}/voila/render/webcam.ipynb", ".maskdet-camera-start",
                             "webcam no model")
    assert "no model: model" in page.locator(".maskdet-error").first.inner_text()
    page.screenshot(path=ARTIFACTS / "webcam-no-model.png", full_page=True)
    assert "Traceback" not in page.content() and not errors, errors
