"""The stored notebooks are what a reader should find: run once top to bottom, clean outputs.

(nbval, configured in pyproject.toml, separately re-runs them and compares their outputs.)
"""

import json
import re

import pytest

from support.notebook_import import NOTEBOOK_1, NOTEBOOK_2, NOTEBOOK_3, NOTEBOOK_4

MACHINE_PATH = re.compile(r"(/home/|/Users/|/root/|/tmp/|/work/|site-packages|[A-Z]:\\\\Users)")


@pytest.fixture(params=[NOTEBOOK_1, NOTEBOOK_2, NOTEBOOK_3, NOTEBOOK_4],
                ids=["notebook1", "notebook2", "notebook3", "notebook4"])
def stored_notebook(request):
    return json.loads(request.param.read_text(encoding="utf-8"))


def notebook_1_sources():
    return {"".join(cell["source"]) for cell in json.loads(NOTEBOOK_1.read_text(encoding="utf-8"))["cells"]}


def code_cells(stored_notebook):
    return [cell for cell in stored_notebook["cells"] if cell["cell_type"] == "code"]


def test_ran_once_top_to_bottom(stored_notebook):
    counts = [cell["execution_count"] for cell in code_cells(stored_notebook)]
    assert counts == list(range(1, len(counts) + 1))


def test_outputs_are_clean(stored_notebook):
    for cell in code_cells(stored_notebook):
        for output in cell["outputs"]:
            assert output["output_type"] != "error", output.get("evalue")
            assert output.get("name") != "stderr", "".join(output["text"])[:300]
            assert "application/vnd.jupyter.widget-view+json" not in output.get("data", {})
            text = json.dumps(output.get("text", "")) + json.dumps(output.get("data", {}).get("text/plain", ""))
            assert not MACHINE_PATH.search(text), MACHINE_PATH.search(text).group(0)
    assert "widgets" not in stored_notebook["metadata"]


def test_generated_text_is_stored(stored_notebook):
    """Text the model wrote is stored: notebook 1's continuation of its prompt, or in the fine-tuning notebook the
    base model's few-shot answer to a held-out sentence."""
    outputs = ["".join(o.get("text", "")) for cell in code_cells(stored_notebook) for o in cell["outputs"]]
    if "Fine-tuning" in "".join(stored_notebook["cells"][0]["source"]):
        assert any('few-shot  {"person": "' in text for text in outputs)
    else:
        assert any("The three most important inventions of the twentieth century were" in text and len(text) > 200
                   for text in outputs)


def test_sections_are_numbered_in_order(stored_notebook):
    headings = [line for cell in stored_notebook["cells"] if cell["cell_type"] == "markdown"
                for line in "".join(cell["source"]).splitlines() if line.startswith("## ")]
    numbers = [int(m.group(1)) for h in headings if (m := re.match(r"## (\d+)\. ", h))]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 13


def test_concept_cells_have_prose_before_them(stored_notebook):
    """Each class a notebook introduces has prose before it (the fine-tuning notebook writes notebook 1's model
    out again under one heading: those cells are notebook 1's, introduced there)."""
    cells = stored_notebook["cells"]
    shared = notebook_1_sources() if "Fine-tuning" in "".join(cells[0]["source"]) else set()
    for i, cell in enumerate(cells):
        if "".join(cell["source"]) in shared:
            continue
        if "export" in cell.get("metadata", {}).get("tags", []) and "class " in "".join(cell["source"]):
            assert cells[i - 1]["cell_type"] == "markdown", "".join(cell["source"])[:80]


def test_pictures_are_stored_as_png(stored_notebook):
    """Every cell that draws (plt.show()) stored its picture."""
    for cell in code_cells(stored_notebook):
        if "plt.show()" in "".join(cell["source"]):
            assert any("image/png" in o.get("data", {}) for o in cell["outputs"]), "".join(cell["source"])[:80]


def test_device_and_memory_are_said_aloud(stored_notebook):
    outputs = "".join("".join(o.get("text", "")) for cell in code_cells(stored_notebook) for o in cell["outputs"])
    assert "device: cpu" in outputs or "device: cuda" in outputs or "device: mps" in outputs
    assert "resident (RSS) on cpu" in outputs or "max allocated on cuda" in outputs


def test_each_notebook_claims_module_reads_what_its_notebook_computes_under_nbval():
    """tests/notebook_claims/*.py assert on values the notebook's kernel holds after its last cell (conftest.py): the
    notebook must exist, and each name RESULTS reads must be assigned by a cell that nbval runs (not nbval-skip)."""
    import ast
    import importlib

    from support.notebook_import import ROOT

    modules = [importlib.import_module(f"notebook_claims.{path.stem}")
               for path in sorted((ROOT / "tests" / "notebook_claims").glob("*.py"))]
    assert modules
    for module in modules:
        name = module.__name__
        cells = json.loads((ROOT / module.NOTEBOOK).read_text(encoding="utf-8"))["cells"]
        computed = {node.id for cell in cells if cell["cell_type"] == "code"
                    and "nbval-skip" not in cell.get("metadata", {}).get("tags", [])
                    for node in ast.walk(ast.parse("".join(cell["source"])))
                    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
        names = [node for node in ast.walk(ast.parse(module.RESULTS)) if isinstance(node, ast.Name)]
        bound = {n.id for n in names if isinstance(n.ctx, ast.Store)}  # a comprehension's own variables
        read = {n.id for n in names if isinstance(n.ctx, ast.Load)} - bound
        assert read and read <= computed, f"{name} reads {sorted(read - computed)}: no cell nbval runs sets it"
        assert any(name.startswith("test_") for name in vars(module)), f"{name} claims nothing"
