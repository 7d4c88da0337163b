"""Run the notebooks top to bottom and store them with their outputs, as a reader finds them.

    python -m support.run_notebooks            # every notebook (from the repository root)
    python -m support.run_notebooks NOTEBOOK   # one of them

Their kernels see no Hugging Face token and no GPU (reproducible_kernels), so the notebooks' own defaults
take the offline weights on the CPU, whatever this machine has: the stored outputs are then the same on
every machine except in cells tagged nbval-ignore-output. Outputs are kept as a reader would see them:
consecutive prints merged, no timing metadata.

Under ATEN_CPU_CAPABILITY=default (PyTorch's unvectorised kernels, a second arithmetic to check the
stored outputs against) torch.compile's C++ does not build: cells tagged `uses-inductor` are then
left as stored, not run. Compare such a run's outputs with the stored ones (git diff), and don't
commit it.
"""

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert.preprocessors import CoalesceStreamsPreprocessor
from traitlets.config import Config

ROOT = Path(__file__).resolve().parent.parent  # the repository root, where the notebooks are
KERNEL_STARTUP = ROOT / "support" / "kernel"  # its sitecustomize.py runs as each kernel starts
NOTEBOOKS = ["standalone-gemma3.ipynb", "standalone-gemma3-plus-kvcache.ipynb", "standalone-gemma3-int8.ipynb",
             "standalone-gemma3-finetune.ipynb"]


@contextlib.contextmanager
def reproducible_kernels():
    """While open, kernels start as on a machine with no Hugging Face token and no GPU: the notebooks' "auto" then
    takes the offline weights and their device is the CPU, as in the stored outputs. Only the kernels' environment
    changes, never the notebooks' settings or this process's own access."""
    with tempfile.TemporaryDirectory() as empty:
        hidden = {
            "HF_HOME": os.path.join(empty, "huggingface"),  # no stored token and no cached official weights
            "HF_HUB_CACHE": None, "HF_TOKEN_PATH": None, "HF_TOKEN": None, "HUGGING_FACE_HUB_TOKEN": None,
            "CUDA_VISIBLE_DEVICES": "",  # and Apple's GPU hidden by KERNEL_STARTUP's sitecustomize.py
            "PYTHONPATH": os.pathsep.join(p for p in (str(KERNEL_STARTUP), os.environ.get("PYTHONPATH")) if p),
        }
        saved = set_environment(hidden)
        try:
            yield
        finally:
            set_environment(saved)


def set_environment(values):
    """Set each variable to its value, or unset it where the value is None; return the values they had."""
    before = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    return before


def run(path: Path, skip_tag: str) -> float:
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as sockets:
        # The kernel talks over local (IPC) sockets in a private folder, not TCP: nothing to eavesdrop on, so the
        # kernel prints no security warning, and no TCP port to pick.
        ipc = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
        with reproducible_kernels():
            NotebookClient(notebook, timeout=1800, kernel_name="python3", record_timing=False, config=ipc,
                           skip_cells_with_tag=skip_tag, resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    notebook, _ = CoalesceStreamsPreprocessor().preprocess(notebook, {})
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, path)
    return seconds


if __name__ == "__main__":
    # The kernels inherit these: no progress bars in stored outputs (huggingface_hub's and tqdm's own switches).
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    skip_tag = "skip-execution"  # nbclient's own tag; no cell carries it
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "default":
        skip_tag = "uses-inductor"
        print("ATEN_CPU_CAPABILITY=default: cells tagged uses-inductor keep their stored outputs (not run)")
    for name in sys.argv[1:] or NOTEBOOKS:
        seconds = run(ROOT / name, skip_tag)
        print(f"{name}: ran top to bottom in {seconds:.0f} s; open it to read the outputs")
