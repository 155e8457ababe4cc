"""Shared fixtures: the project under test and its real inputs."""
from pathlib import Path

import pytest

from maskdet.core import load_params, project_paths


@pytest.fixture(scope="session")
def project():
    return project_paths(Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="session")
def inputs(project):
    """Paths of the real data set and starting weights named in params.yaml; skip nothing: they must exist."""
    params = load_params("inputs", project)
    found = {name: project.resolve(path) for name, path in params.items()}
    missing = [f"{name}: {path}" for name, path in found.items() if not path.exists()]
    assert not missing, f"inputs named in params.yaml are missing: {missing}"
    return found
