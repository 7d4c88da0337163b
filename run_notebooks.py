"""Run both notebooks top to bottom and store them with their outputs, as a reader finds them.

    python run_notebooks.py            # both notebooks
    python run_notebooks.py NOTEBOOK   # one of them

Uses the offline weights unless a Hugging Face token is configured (see the notebooks' settings).
Outputs are kept as a reader would see them: consecutive prints merged, no timing metadata.
"""

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert.preprocessors import CoalesceStreamsPreprocessor

ROOT = Path(__file__).resolve().parent
NOTEBOOKS = ["standalone-gemma3.ipynb", "standalone-gemma3-plus-kvcache.ipynb"]


def run(path: Path) -> float:
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=1800, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    notebook, _ = CoalesceStreamsPreprocessor().preprocess(notebook, {})
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, path)
    return seconds


if __name__ == "__main__":
    # The kernels inherit these: no progress bars in stored outputs (huggingface_hub's and tqdm's own switches).
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    for name in sys.argv[1:] or NOTEBOOKS:
        seconds = run(ROOT / name)
        print(f"{name}: ran top to bottom in {seconds:.0f} s; open it to read the outputs")
