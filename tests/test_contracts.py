"""The project's own contracts, read from its files: chapters in dependency order, and each pipeline stage
declared once, in dvc.yaml, with its notebook's parameters and its dependencies agreeing with it."""
import json
import re

import pytest
import yaml

from maskdet.core import project_paths
from maskdet.stages import notebook_parameters, stage_sections

PATHS = project_paths()
LIBRARY = PATHS.root / "maskdet"
STAGES = yaml.safe_load((PATHS.root / "dvc.yaml").read_text())["stages"]
IMPORTED = re.compile(r"^\s*(?:from (?:\.|maskdet\.)([a-z_]+) import|import maskdet\.([a-z_]+))", re.MULTILINE)


def imported_modules(text):
    """The maskdet modules a piece of Python imports, at the top or inside functions."""
    return {a or b for a, b in IMPORTED.findall(text)} - {"_modidx"}


def module_imports():
    """Each library module and the maskdet modules it imports."""
    return {f.stem: imported_modules(f.read_text()) for f in LIBRARY.glob("*.py") if not f.stem.startswith("_")}


def chapter(module):
    """The notebook a module is exported from, e.g. '08_inference'."""
    return re.search(r"File to edit: \.\./nbs/(\w+)\.ipynb", (LIBRARY / f"{module}.py").read_text()).group(1)


def code_cells(notebook):
    return [("".join(c["source"]), c["metadata"].get("tags", [])) for c in json.loads(notebook.read_text())["cells"]
            if c["cell_type"] == "code"]


def reachable(modules, graph):
    """`modules` and every module they import, directly or not."""
    seen, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph[module]
    return seen


def test_chapters_are_numbered_in_dependency_order():
    graph = module_imports()
    backwards = [f"{chapter(m)} imports {chapter(d)}"
                 for m, deps in graph.items() for d in deps if chapter(d) >= chapter(m)]
    assert not backwards, backwards


def test_every_pipeline_notebook_is_a_stage_but_the_drift_job():
    """Drift reads the live prediction log: it runs as `maskdet drift`, outside `dvc repro`."""
    notebooks = {p.stem for p in (PATHS.root / "nbs" / "pipeline").glob("*.ipynb")}
    assert notebooks - set(STAGES) == {"drift"} and set(STAGES) <= notebooks


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_is_its_notebook_and_dvc_watches_the_sections_it_reads(stage):
    declared = STAGES[stage]
    assert declared["cmd"] == f"maskdet {stage}"
    notebook = PATHS.root / "nbs" / "pipeline" / f"{stage}.ipynb"
    tagged = [tags for _, tags in code_cells(notebook) if "parameters" in tags]
    assert len(tagged) == 1, f"{notebook.name} needs one cell tagged 'parameters'"
    watched = list(dict.fromkeys(str(p).split(".")[0] for p in declared.get("params", [])))
    assert watched == stage_sections(stage, PATHS), (stage, watched, notebook_parameters(notebook))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_depends_on_exactly_the_modules_its_notebook_reaches(stage):
    notebook = PATHS.root / "nbs" / "pipeline" / f"{stage}.ipynb"
    used = reachable(set().union(*(imported_modules(source) for source, _ in code_cells(notebook))), module_imports())
    deps = set(STAGES[stage]["deps"])
    missing = sorted(f"maskdet/{m}.py" for m in used if f"maskdet/{m}.py" not in deps)
    assert not missing, f"stage {stage} runs code in {missing} but does not list it in its deps"
    extra = sorted(d for d in deps if re.fullmatch(r"maskdet/\w+\.py", d) and d[len("maskdet/"):-3] not in used)
    assert not extra, (f"stage {stage} lists {extra} in its deps but never runs them: "
                       "a change there reruns it for nothing")
    assert f"nbs/pipeline/{stage}.ipynb" in deps


UNCLEAN = re.compile(r"Traceback|/tmp/|/home/|/root/|/work/|/Users/|\bpids?\b|it/s\]|Warning:")


def output_texts(output):
    """The text a reader sees of one cell output (images left out)."""
    if output["output_type"] == "stream":
        return ["".join(output["text"])]
    data = output.get("data", {})
    return ["".join(data[kind]) for kind in ("text/plain", "text/html", "text/markdown") if kind in data]


@pytest.mark.parametrize("notebook", sorted(p.name for p in (PATHS.root / "nbs").glob("*.ipynb")))
def test_committed_outputs_hold_no_paths_pids_warnings_or_tracebacks(notebook):
    cells = json.loads((PATHS.root / "nbs" / notebook).read_text())["cells"]
    unclean = [(c["id"], found.group(0) if (found := UNCLEAN.search(text)) else "stderr")
               for c in cells for o in c.get("outputs", [])
               for text in (output_texts(o) if o["output_type"] != "error" else ["Traceback"])
               if o.get("name") == "stderr" or UNCLEAN.search(text)]
    assert not unclean, f"{notebook}: cells {unclean}: clear those outputs or make the cell print none of it"
