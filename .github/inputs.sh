#!/usr/bin/env bash
# The pipeline's inputs on a machine that lacks them, such as a GitHub runner: the data sets under
# params.yaml's inputs.root and the starting weights of inputs.weights (on the project's own machines they
# lie in ../shared). MASKDET_INPUTS_URL (a repository secret: a release asset, a presigned S3/GCS URL, or
# file:// for a local copy) names a .tar.gz of what that folder holds, `datasets/face-mask-detection/` and
# `weights/yolov8n-face.pt`; it is unpacked where inputs.root's parent is (../shared). Then it says whether every
# input is there: `available=true|false` to $GITHUB_OUTPUT, so that a workflow skips the jobs that need data
# with a notice instead of failing at the input check. Exit 0 either way; run after `make install` (or set PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."

inputs() {  # `inputs missing`: the inputs not there yet; `inputs folder`: where the archive is unpacked
  "${PYTHON:-.venv/bin/python}" - "$1" <<'PY'
import sys
from maskdet.core import load_params, project_paths
paths = project_paths()
inputs = load_params("inputs", paths)
root = paths.resolve(inputs["root"])
wanted = [paths.resolve(inputs["weights"])] + [root / source["path"] for source in inputs["sources"]]
print(" ".join(str(path) for path in wanted if not path.exists()) if sys.argv[1] == "missing" else root.parent)
PY
}

if [ -n "$(inputs missing)" ] && [ -n "${MASKDET_INPUTS_URL:-}" ]; then
  folder="$(inputs folder)"
  echo "fetching the inputs from MASKDET_INPUTS_URL into $folder"
  mkdir -p "$folder"
  curl --fail --silent --show-error --location --retry 3 "$MASKDET_INPUTS_URL" | tar -xz -C "$folder"
fi

missing="$(inputs missing)"
if [ -z "$missing" ]; then
  echo "inputs: all there"
  echo "available=true" >> "${GITHUB_OUTPUT:-/dev/null}"
else
  echo "::notice::the pipeline's inputs are missing ($missing): set the repository secret MASKDET_INPUTS_URL to a .tar.gz of datasets/ and weights/ (see docs/deployment.md, Workflows); the jobs that need data are skipped"
  echo "available=false" >> "${GITHUB_OUTPUT:-/dev/null}"
fi
