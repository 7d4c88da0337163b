"""Root conftest: how nbval runs the notebooks (the tests' own fixtures live in tests/conftest.py)."""

import contextlib
import os
import tempfile
from pathlib import Path

import pytest

from support.run_notebooks import reproducible_kernels

# nbval's kernels inherit these: no progress bars in compared outputs (huggingface_hub's and tqdm's own switches).
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TQDM_DISABLE"] = "1"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (pyproject.toml's -n 2) the workers share the CPU cores: each, and the notebook kernel it
    # starts, gets its share of PyTorch threads. Two workers of two threads on two cores run 4 threads where 2 fit,
    # and PyTorch's threads wait for each other at every operation.
    threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read when torch is imported: here and in the kernels


def pytest_configure(config):
    starts_workers = bool(getattr(config.option, "numprocesses", None)) and not os.environ.get("PYTEST_XDIST_WORKER")
    if os.environ.get("GEMMA3_STANDALONE") == "1" and not starts_workers:  # in the processes that start kernels
        run_notebooks_standalone()


def run_notebooks_standalone():
    """The notebooks run as a reader runs one opened on its own, without the project's gemma3_weights package
    (support/kernel/sitecustomize.py blocks it in the kernels) and so without the offline weights: "auto" then
    takes the official -it weights from the Hugging Face hub, simulated here by serving the offline folder. The
    outputs nbval compares do not depend on which of the two the weights are: CI's second pass runs this way."""
    from gemma3_weights import prepare_weights

    os.environ["GEMMA3_SIMULATED_HUB"] = str(prepare_weights("offline").folder)


def inductor_builds_here():
    """Whether torch.compile's CPU code can build: its generated C++ uses PyTorch's vectorised kernels, which
    ATEN_CPU_CAPABILITY=default (the unvectorised arithmetic, our second arithmetic) leaves out."""
    import torch

    return torch.backends.cpu.get_cpu_capability() != "DEFAULT"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    # Kernels start one at a time: jupyter_client picks a kernel's TCP ports with no coordination between processes,
    # so two xdist workers starting notebooks at once can take the same port, and the loser's cells all fail with
    # "Kernel didn't respond in 60 seconds" (treebeardtech/nbmake#129; seen once here). Held until the kernel answers.
    # The kernel starts as on a machine with no Hugging Face token and no GPU, so the notebooks' own settings take
    # the offline weights on the CPU and their outputs can be compared with the stored ones anywhere.
    starts_kernel = str(item.path).endswith(".ipynb") and getattr(item.parent, "kernel", None) is None
    with kernel_start_lock() if starts_kernel else contextlib.nullcontext(), \
            reproducible_kernels() if starts_kernel else contextlib.nullcontext():
        yield


def kernel_start_lock():
    from filelock import FileLock  # released by the operating system if its process dies

    return FileLock(str(Path(tempfile.gettempdir()) / "gemma3-notebook-kernel-start.lock"))


def pytest_collectstart(collector):
    # Compare what a notebook prints, not what libraries log on stderr (warnings differ between
    # machines); tests/no_arithmetic/test_notebooks_clean.py checks that the stored notebooks hold no stderr at all.
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)


def pytest_collection_modifyitems(items):
    no_inductor = pytest.mark.skip(reason="ATEN_CPU_CAPABILITY=default: inductor's generated C++ does not build "
                                          "('at::vec' has not been declared); the native pass runs this")
    for item in items:
        notebook_cell = str(item.path).endswith(".ipynb")
        if notebook_cell:
            # Running a notebook takes minutes: its cells count as slow, so `pytest -m "not slow"` leaves them out.
            item.add_marker(pytest.mark.slow)
        tags = item.cell.get("metadata", {}).get("tags", []) if notebook_cell else []
        if ("uses-inductor" in tags or item.get_closest_marker("uses_inductor")) and not inductor_builds_here():
            item.add_marker(no_inductor)
