"""Root conftest: how nbval runs the notebooks (the tests' own fixtures live in tests/conftest.py)."""


def pytest_collectstart(collector):
    # Compare what a notebook prints, not what libraries log on stderr (warnings differ between
    # machines); tests/test_notebooks_clean.py checks that the stored notebooks hold no stderr at all.
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)
