"""The docs site and the README, made from the notebooks: the README is what `nbs/index.ipynb` makes, the site builds
in strict mode (a broken link fails it) and reads right in a real browser (Debian's Chromium)."""
import functools
import http.server
import json
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import BIN
from PIL import Image

from maskdet.docs import chapters, readme_markdown, results_table
from maskdet.launch import free_port

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
GUIDES = ("getting-started", "pipeline", "serving", "monitoring", "deployment", "results", "model-card", "reference")


def test_the_readme_is_what_the_index_notebook_makes(project):
    committed = (project.root / "README.md").read_text(encoding="utf-8")
    assert committed == readme_markdown(project.root), "README.md is not what nbs/index.ipynb makes: run `make readme`"


def test_the_readme_is_short_and_shows_a_picture_of_detections(project):
    readme = (project.root / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    pictures = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", readme)
    assert pictures, "the README shows no picture"
    for picture in pictures:
        with Image.open(project.root / picture) as image:
            assert image.width >= 400 and image.height >= 250, (picture, image.size)


def test_the_readme_shows_the_committed_metrics(project):
    metrics = json.loads((project.root / "reports" / "metrics.json").read_text())
    assert results_table(metrics) in (project.root / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def site(project, tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    done = subprocess.run([BIN / "mkdocs", "build", "--strict", "--site-dir", folder], cwd=project.root,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return folder


def test_the_site_has_the_home_page_every_guide_and_every_chapter(project, site):
    pages = ["index.html", *(f"{guide}/index.html" for guide in GUIDES),
             *(f"chapters/{notebook.stem}/index.html" for notebook in chapters(project.root / "nbs"))]
    assert [page for page in pages if not (site / page).is_file()] == []
    metrics = json.loads((project.root / "reports" / "metrics.json").read_text())
    assert f"<strong>{metrics['mAP50']:.3f}</strong>" in (site / "index.html").read_text()
    reference = (site / "reference" / "index.html").read_text()
    assert 'id="maskdet.inference.Detector"' in reference and 'id="maskdet.detections.Detections"' in reference


@pytest.fixture(scope="module")
def served(site):
    """The built site on a local HTTP server (loopback, a free port)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is missing: run `make browser`")
def test_three_pages_read_right_in_a_browser(served):
    playwright = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        missing = []
        page.on("response", lambda r: missing.append(r.url) if r.status >= 400 and r.url.startswith(served) else None)

        page.goto(f"{served}/", wait_until="load")
        picture = page.locator("article img").first
        assert picture.evaluate("img => img.complete && img.naturalWidth") >= 400
        assert "labels as published" in page.locator("article table").first.inner_text()
        page.screenshot(path=ARTIFACTS / "docs-home.png")

        page.goto(f"{served}/chapters/01_detections/", wait_until="load")
        assert page.locator("article h1").first.inner_text().strip().rstrip("¶") == "detections"
        assert page.locator("article pre code").count() > 5  # the chapter's code, as the notebook holds it
        assert page.locator("nav a[href*='14_docs']").count() >= 1  # every chapter in the navigation
        page.screenshot(path=ARTIFACTS / "docs-chapter.png")

        page.goto(f"{served}/model-card/", wait_until="load")
        assert "Intended use" in page.locator("article").inner_text()
        page.screenshot(path=ARTIFACTS / "docs-model-card.png")
        browser.close()
    assert missing == [], f"pages or files the site links to are missing: {missing}"
