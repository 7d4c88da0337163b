"""Makes a notebook kernel behave as if the notebook had been opened on its own, outside the project.

The root conftest puts this folder first on the kernels' PYTHONPATH when GEMMA3_STANDALONE=1, so Python runs it
at start-up: the project's `gemma3_weights` package cannot be imported, and `huggingface_hub.hf_hub_download`
is replaced by a simulated hub that serves the files of GEMMA3_SIMULATED_HUB (the offline folder, converted
beforehand by the tests' own process), since this machine cannot reach the real hub.
"""

import os
import sys

if os.environ.get("GEMMA3_SIMULATED_HUB"):
    sys.modules["gemma3_weights"] = None  # `import gemma3_weights` raises ImportError, as beside no project

    import huggingface_hub

    def hf_hub_download(repo_id, filename, **kwargs):
        """What the real function returns: the path of the file in a local folder (the shared cache)."""
        return os.path.join(os.environ["GEMMA3_SIMULATED_HUB"], filename)

    huggingface_hub.hf_hub_download = hf_hub_download
