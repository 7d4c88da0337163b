"""Runs at the start of every notebook kernel the project starts (support.run_notebooks and the tests put this
folder first on the kernels' PYTHONPATH, see support.run_notebooks.reproducible_kernels).

- On macOS, Apple's GPU is hidden: no environment variable hides MPS as CUDA_VISIBLE_DEVICES hides CUDA, and the
  stored outputs are the CPU's.
- With GEMMA3_SIMULATED_HUB set (CI's second pass, GEMMA3_STANDALONE=1 in conftest.py), the kernel behaves as if
  its notebook had been opened on its own, outside the project: `gemma3_weights` cannot be imported, and
  `huggingface_hub.hf_hub_download` is a simulated hub serving the files of GEMMA3_SIMULATED_HUB (the offline
  folder, converted beforehand by the tests' own process), since this machine cannot reach the real hub.
"""

import os
import sys

if sys.platform == "darwin":
    import torch

    torch.backends.mps.is_available = lambda: False

if os.environ.get("GEMMA3_SIMULATED_HUB"):
    sys.modules["gemma3_weights"] = None  # `import gemma3_weights` raises ImportError, as beside no project

    import huggingface_hub

    def hf_hub_download(repo_id, filename, **kwargs):
        """What the real function returns: the path of the file in a local folder (the shared cache)."""
        return os.path.join(os.environ["GEMMA3_SIMULATED_HUB"], filename)

    huggingface_hub.hf_hub_download = hf_hub_download
