"""Root conftest: how nbval runs the notebooks (the tests' own fixtures live in tests/conftest.py)."""

import contextlib
import inspect
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
    add_notebook_claims(items)


# What a notebook's run shows is asserted on that very run. Each module of tests/notebook_claims names a notebook
# (NOTEBOOK), an expression its kernel evaluates after the last cell (RESULTS, sent back as JSON), the arguments made
# of that value (arguments) and test_* functions that take them by name. They run as items of the notebook, after
# its cells, in its kernel's session: the labs are computed once per pass, by the notebook the reader reads, and no
# test computes them again.
CLAIMS = Path(__file__).resolve().parent / "tests" / "notebook_claims"


def claims_modules():
    """The modules of tests/notebook_claims (importable as notebook_claims.<name>: tests/ is on pytest's pythonpath)."""
    import importlib

    return [importlib.import_module(f"notebook_claims.{path.stem}") for path in sorted(CLAIMS.glob("*.py"))]


def add_notebook_claims(items):
    for module in claims_modules():
        cells = [i for i, item in enumerate(items) if item.path.name == module.NOTEBOOK and hasattr(item, "cell")]
        if not cells:  # the notebook is not among the collected items
            continue
        notebook = items[cells[-1]].parent
        claims = [NotebookClaim.from_parent(notebook, name=name, module=module, claim=function)
                  for name, function in vars(module).items() if name.startswith("test_") and callable(function)]
        for claim in claims:
            claim.add_marker(pytest.mark.slow)
        items[cells[-1] + 1:cells[-1] + 1] = claims


class NotebookClaim(pytest.Item):
    """One test_* function of a notebook_claims module, given the value of its RESULTS in the notebook's kernel."""

    def __init__(self, *, module, claim, **kwargs):
        super().__init__(**kwargs)
        self.module, self.claim = module, claim

    def runtest(self):
        cache = self.parent.__dict__.setdefault("claims_results", {})  # one evaluation per notebook run
        if self.module.RESULTS not in cache:
            cache[self.module.RESULTS] = kernel_value(self.parent.kernel, self.module.RESULTS)
        arguments = self.module.arguments(cache[self.module.RESULTS])
        self.claim(**{name: arguments[name] for name in inspect.signature(self.claim).parameters})

    def repr_failure(self, excinfo):
        return super().repr_failure(excinfo, style="short")

    def reportinfo(self):
        return self.path, None, f"{self.path.name}::{self.name}"


def kernel_value(kernel, expression):
    """The value of `expression` in a running nbval kernel, through JSON; the kernel's error if it raises one."""
    import json

    if kernel is None or not kernel.is_alive():
        raise RuntimeError("The notebook's kernel is not running: its cells must run before its claims.")
    msg_id = kernel.execute_cell_input(f"import json as _json\nprint(_json.dumps({expression}))", allow_stdin=False)
    kernel.await_reply(msg_id, timeout=600)
    printed = []
    while True:
        message = kernel.get_message("iopub", timeout=60)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = message["msg_type"], message["content"]
        if kind == "stream" and content["name"] == "stdout":
            printed.append(content["text"])
        elif kind == "error":
            raise RuntimeError(f"{expression} failed in the notebook's kernel: {content['ename']}: {content['evalue']}")
        elif kind == "status" and content["execution_state"] == "idle":
            return json.loads("".join(printed))
