"""`python -m support.run_notebooks`, the README's first command: a notebook run by it is stored with its outputs,
and its kernel starts quietly (ipykernel 7.4 warns about eavesdropping on every kernel started over TCP)."""

import os

import nbformat

from support.run_notebooks import run


def test_a_run_stores_the_outputs_and_the_kernel_says_nothing(tmp_path, capfd):
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")]), path)
    run(path, skip_tag="skip-execution")
    outputs = nbformat.read(path, as_version=4).cells[0].outputs
    assert [output.get("text") for output in outputs] == ["42\n"]
    captured = capfd.readouterr()
    assert "WARNING" not in captured.err and "WARNING" not in captured.out, captured.err


def test_a_kernel_sees_no_token_and_no_gpu(tmp_path, monkeypatch):
    """reproducible_kernels: whatever token this machine has, the notebooks' "auto" finds none (and so takes the
    offline weights), and no CUDA device is visible (so their device is the CPU), as in the stored outputs."""
    monkeypatch.setenv("HF_TOKEN", "hf_a_token_this_machine_has")
    path = tmp_path / "environment.ipynb"
    cell = "\n".join(["import os", "from huggingface_hub import get_token",
                      "print(get_token(), repr(os.environ['CUDA_VISIBLE_DEVICES']))"])
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)]), path)
    run(path, skip_tag="skip-execution")
    assert nbformat.read(path, as_version=4).cells[0].outputs[0]["text"] == "None ''\n"
    assert os.environ["HF_TOKEN"] == "hf_a_token_this_machine_has"  # this process's own access is left as it was
