"""Root conftest: how nbval runs the notebooks (the tests' own fixtures live in tests/conftest.py)."""

import os

os.environ["GEMMA3_NO_PROGRESS"] = "1"  # nbval's kernels inherit it: no progress bars in compared outputs


def pytest_collectstart(collector):
    # Compare what a notebook prints, not what libraries log on stderr (warnings differ between
    # machines); tests/test_notebooks_clean.py checks that the stored notebooks hold no stderr at all.
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)
