"""The Voila dashboards in a real browser: `maskdet dashboard` on a free port, driven by Playwright (Debian's Chromium).

The model is made from the starting face detector (the `model` fixture of conftest.py); the prediction log is filled
with real predictions of data set photos, the stored ones logged under a file name that holds HTML; Chromium's fake
camera plays a clip made of data set photos, and the server-side video source offers a clip of the same photos from
the media folder. The filled dashboards are behind a token. Screenshots and the measured figures (first render
times, webcam round trip and frames per second) go to test-artifacts/.
"""

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import cv2
import httpx
import psutil
import pytest
from conftest import BIN, dashboard_root, wait_until

from maskdet.core import load_params
from maskdet.drift import drift_decision, folder_features
from maskdet.inference import Detector, as_rgb
from maskdet.launch import free_port
from maskdet.monitoring import write_decision
from maskdet.predictions import PredictionLog

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
PHOTOS = ("maksssksksss0.png", "maksssksksss1.png", "maksssksksss4.png")
RENDER_LIMIT_S = 10
TOKEN = "dashboard-token-4f9c2e"
XSS_NAME = "<img src=x onerror=alert(1)>.jpg"  # an uploaded file's name, logged as the source of its prediction
STREAM = "rtsp://viewer:s3cret@camera.invalid:554/live"
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


def avi_clip(images, path, size=(512, 366)):
    """An MJPEG AVI clip (5 frames/s) of `images`, one frame each, for the server-side video source."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, size)
    for image in images:
        writer.write(cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), size))
    writer.release()
    return path


@pytest.fixture(scope="module")
def filled(project, inputs, model, tmp_path_factory):
    """A project with a prediction log of a dozen real photos (every other one stored, under `XSS_NAME`), a real drift
    decision, and a media folder: a clip, a link that points out of it to another clip, a file that is no video."""
    root = dashboard_root(project, tmp_path_factory.mktemp("filled"))
    images = sorted((inputs["dataset"] / "images").glob("*.png"))
    detector, log = Detector(model), PredictionLog(root / "predictions.db")
    for i, file in enumerate(images[:12]):
        rgb = as_rgb(file)
        start = time.perf_counter()
        found = detector.predict(rgb)
        log.record(rgb, found, (time.perf_counter() - start) * 1000, request_id=f"test-{i}",
                   source=XSS_NAME if i % 2 == 0 else "test", model_version=detector.version, backend=detector.backend,
                   store_image=i % 2 == 0)
    photos = [as_rgb(inputs["dataset"] / "images" / name) for name in PHOTOS]
    (root / "media").mkdir()
    avi_clip(photos * 2, root / "media" / "clip.avi")
    avi_clip(photos[:1], root / "private.avi")
    (root / "media" / "escape.avi").symlink_to(root / "private.avi")
    (root / "media" / "notes.txt").write_text("not a video")
    params = load_params("drift", project) | {"min_window": 5, "columns": ["width", "height", "brightness", "contrast"]}
    result = drift_decision(folder_features(images[:12]), folder_features(images[100:112]), params)
    write_decision(result, root / "reports")
    return root


def start_dashboard(root, env):
    port = free_port()
    env = os.environ | env | {"MASKDET_ROOT": str(root), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for key in ("PYTEST_CURRENT_TEST", "MLFLOW_TRACKING_URI"):  # the registry listed is the test project's: none
        env.pop(key, None)
    output = root / "voila.log"
    with open(output, "w") as out:
        process = subprocess.Popen([BIN / "maskdet", "dashboard", "--port", str(port)], cwd=root, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True, "Voila listening", 90,
               alive=process, output=output)
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
def served(filled, model):
    """The filled project's dashboards behind `TOKEN`: {'url', 'process', 'output'}."""
    process, url, output = start_dashboard(filled, {"MASKDET_MODEL": str(model),
                                                    "MASKDET_PREDICTION_LOG": str(filled / "predictions.db"),
                                                    "MASKDET_STORE_IMAGES": "1", "MASKDET_DASHBOARD_TOKEN": TOKEN,
                                                    "MASKDET_MEDIA_DIR": str(filled / "media"),
                                                    "MASKDET_VIDEO_SOURCES": f"0,{STREAM}"})
    yield {"url": url, "process": process, "output": output}
    stop_dashboard(process, output)


@pytest.fixture(scope="module")
def server(served):
    return served["url"]


def page_url(server, name, token=TOKEN):
    """The URL of the dashboard `name` (webcam, monitor), with `?token=` when `token`."""
    return f"{server}/voila/render/{name}.ipynb" + (f"?token={token}" if token else "")


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
    page, errors = open_page(browser, page_url(server, "monitor"), ".maskdet-numbers", "monitor", FIRST_RENDER_LIMIT_S)
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


def test_a_file_name_holding_html_shows_as_text_in_the_monitor(server, browser):
    dialogs = []
    context = browser.new_context(viewport={"width": 1280, "height": 1800})
    page = context.new_page()
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(page_url(server, "monitor"), timeout=60_000)
    page.wait_for_selector(".maskdet-numbers", timeout=60_000)
    captions = page.locator(".widget-html small", has_text=XSS_NAME)
    captions.first.wait_for(timeout=10_000)
    assert captions.count() == 6  # the stored images' captions: the name as text
    assert all(XSS_NAME in text for text in captions.all_inner_texts())
    page.wait_for_timeout(1000)  # an injected image would fail to load and fire its onerror by now
    assert page.locator("img[src='x']").count() == 0 and dialogs == []
    context.close()


def test_the_dashboards_need_their_token_and_never_show_it(served):
    url, process, output = served["url"], served["process"], served["output"]
    for token in (None, "wrong-token"):
        refused = httpx.get(page_url(url, "monitor", token), timeout=30)
        assert refused.status_code == 302 and refused.headers["location"].startswith("/login"), refused.status_code
        login = httpx.get(page_url(url, "monitor", token), timeout=30, follow_redirects=True)
        assert "maskdet-numbers" not in login.text and "monitoring" not in login.text
    page = httpx.get(page_url(url, "monitor"), timeout=120)
    assert page.status_code == 200 and "maskdet: monitoring and drift" in page.text
    assert httpx.get(f"{url}/no-such-page?token={TOKEN}", timeout=30).status_code == 404
    wait_until(lambda: "404 GET /no-such-page" in output.read_text(), "the 404 in Voila's log", 10, output=output)
    assert TOKEN not in output.read_text()
    tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    kernels = [p for p in tree if "ipykernel" in " ".join(p.cmdline())]
    assert kernels, [p.cmdline() for p in tree]
    assert not any(TOKEN in " ".join(p.cmdline()) for p in tree)
    assert not any("MASKDET_DASHBOARD_TOKEN" in p.environ() for p in kernels)


def test_the_dashboards_refuse_to_listen_beyond_loopback_without_a_token(filled):
    env = os.environ | {"MASKDET_ROOT": str(filled), "MASKDET_DASHBOARD_TOKEN": ""}
    done = subprocess.run([BIN / "maskdet", "dashboard", "--host", "0.0.0.0", "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == "", (done.returncode, done.stdout)
    assert done.stderr.strip().splitlines() == [
        "maskdet dashboard: --host 0.0.0.0 is reachable from other machines: set MASKDET_DASHBOARD_TOKEN first"]


def test_the_model_choice_is_a_list_of_the_models_folder_and_nothing_can_be_typed(server, browser, model):
    page, errors = open_page(browser, page_url(server, "webcam"), ".maskdet-camera-start", "webcam models")
    choice = page.locator(".widget-dropdown", has_text="Model").locator("select")
    offered = choice.locator("option").all_inner_texts()
    assert offered == [str(model / name) for name in ("openvino/fp32/model.xml", "model.onnx", "best.pt")], offered
    assert page.locator("input[type=text], input:not([type]), textarea").count() == 0
    choice.select_option(label=str(model / "model.onnx"))
    page.get_by_role("button", name="Load").click()
    page.locator(".maskdet-ok", has_text="model.onnx").wait_for(timeout=30_000)
    assert not errors, errors


def test_the_video_source_is_a_list_of_the_allowed_ones_and_plays_a_media_file(server, browser, filled):
    page, errors = open_page(browser, page_url(server, "webcam"), ".maskdet-camera-start", "webcam video")
    page.get_by_role("tab", name="Server-side video").click()
    choice = page.locator(".widget-dropdown", has_text="Source").locator("select")
    offered = [text.replace("\xa0", " ") for text in choice.locator("option").all_inner_texts()]  # ipywidgets: nbsp
    assert offered == ["camera 0", "rtsp://camera.invalid:554/live", "clip.avi"], offered  # no link out, no text file
    assert "s3cret" not in page.content() and "viewer" not in page.content()
    choice.select_option(label="clip.avi")
    page.get_by_role("button", name="Start").click()
    page.get_by_text("the source ended after 6 frames").wait_for(timeout=60_000)
    shown = page.locator(".widget-image").evaluate_all("(images) => images.filter((i) => i.naturalWidth >= 512).length")
    assert shown >= 1
    assert "dashboard:video" in set(PredictionLog(filled / "predictions.db").read().source)
    page.screenshot(path=ARTIFACTS / "webcam-video.png", full_page=True)
    assert not errors, errors


def test_the_webcam_page_draws_labelled_boxes_on_the_fake_camera(server, browser, filled):
    before = len(PredictionLog(filled / "predictions.db"))
    page, errors = open_page(browser, page_url(server, "webcam"), ".maskdet-camera-start", "webcam")
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
    page, errors = open_page(browser, page_url(server, "webcam"), ".maskdet-camera-start", "webcam denied",
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
    page, errors = open_page(browser, page_url(bare_server, "monitor", token=None), ".maskdet-message", "monitor empty",
                             FIRST_RENDER_LIMIT_S)
    assert page.get_by_text("no predictions yet").is_visible()
    assert page.get_by_text("no drift report yet: run `maskdet drift`").is_visible()
    assert page.get_by_text("no serving model").is_visible()
    page.screenshot(path=ARTIFACTS / "monitor-empty.png", full_page=True)
    assert "Traceback" not in page.content() and not errors, errors
    page, errors = open_page(browser, page_url(bare_server, "webcam", token=None), ".maskdet-camera-start",
                             "webcam no model")
    assert "no model: none in the models folder" in page.locator(".maskdet-error").first.inner_text()
    page.screenshot(path=ARTIFACTS / "webcam-no-model.png", full_page=True)
    assert "Traceback" not in page.content() and not errors, errors
