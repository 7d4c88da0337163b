"""Root conftest: how nbval runs the notebooks (the tests' own fixtures live in tests/conftest.py)."""

import os

# nbval's kernels inherit these: no progress bars in compared outputs (huggingface_hub's and tqdm's own switches).
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TQDM_DISABLE"] = "1"


def pytest_collectstart(collector):
    # Compare what a notebook prints, not what libraries log on stderr (warnings differ between
    # machines); tests/test_notebooks_clean.py checks that the stored notebooks hold no stderr at all.
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)


def pytest_collection_modifyitems(items):
    # Running a notebook takes minutes: its cells count as slow, so `pytest -m "not slow"` leaves them out.
    import pytest

    for item in items:
        if str(item.path).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)
