"""Support code, not part of what a reader opens: importing the notebooks' definitions (notebook_import),
transformers built from our config (hf_reference), the notebook runner (run_notebooks) and the speed table
(benchmark). Run from the repository root: `python -m support.run_notebooks`, `python -m support.benchmark`."""
