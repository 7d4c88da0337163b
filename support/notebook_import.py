"""Import a notebook's definitions, so the tests test the very code readers read.

Code cells tagged `export` (cell metadata; invisible to readers) hold the definitions: config,
classes, functions. They are executed, in order, into a fresh module. Cells that load weights,
generate or plot are not tagged, so importing a notebook is quick and needs no weights.

Used by the tests and by support/benchmark.py.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root, where the notebooks are
NOTEBOOK_1 = ROOT / "standalone-gemma3.ipynb"
NOTEBOOK_2 = ROOT / "standalone-gemma3-plus-kvcache.ipynb"
NOTEBOOK_3 = ROOT / "standalone-gemma3-int8.ipynb"
NOTEBOOK_4 = ROOT / "standalone-gemma3-finetune.ipynb"


def import_notebook(path: Path, name: str | None = None) -> types.ModuleType:
    """Execute the `export`-tagged code cells of a notebook into a new module and return it."""
    notebook = json.loads(Path(path).read_text(encoding="utf-8"))
    module = types.ModuleType(name or Path(path).stem.replace("-", "_"))
    module.__file__ = str(path)
    sys.modules[module.__name__] = module  # torch.compile looks a function's module up by name
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code" and "export" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"])
            exec(compile(source, f"{Path(path).name}:cell", "exec"), module.__dict__)
    return module


def notebook_model(nb, dtype, folder=None):
    """A notebook's model in `dtype`, with the real weights of a converted `folder` when given."""
    cfg = dict(nb.GEMMA3_CONFIG_270M, dtype=dtype)
    model = nb.Gemma3Model(cfg).eval()
    if folder is not None:
        nb.load_weights_into_gemma(model, Path(folder) / "model.safetensors")
    return model
