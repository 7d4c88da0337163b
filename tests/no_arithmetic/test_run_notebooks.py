"""`python -m support.run_notebooks`, the README's first command: a notebook run by it is stored with its outputs,
and its kernel starts quietly (ipykernel 7.4 warns about eavesdropping on every kernel started over TCP)."""

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
