"""Where prepared weights live and how they are written, for both sources.

- the checkpoints folder (`checkpoints/` beside this package, or GEMMA3_CHECKPOINTS), checked to be
  writable before any work starts;
- one preparer at a time: a file lock in it;
- atomic writes: every file is written under a unique temporary name beside its target, then renamed
  into place, so an interrupted run never leaves a half-written file under the real name;
- hashes of files;
- the manifest of a prepared folder: its files' sizes and sha256, its source, and what else a source
  records; written last, so a folder without one was never finished;
- the progress policy: bars for a person watching, none where outputs are kept.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from .outcomes import Failure, FolderProblem, Problem, WeightsError

CHECKPOINTS_ENV = "GEMMA3_CHECKPOINTS"
MANIFEST = "manifest.json"
LOCK_NAME = ".prepare.lock"
LOCK_TIMEOUT = 900  # seconds to wait for another process preparing the weights (a conversion takes ~20 s)


def checkpoints_dir() -> Path:
    """Where weights are kept: `checkpoints/` beside this package (git-ignored), or $GEMMA3_CHECKPOINTS (`~` expanded;
    set but empty counts as unset)."""
    setting = os.environ.get(CHECKPOINTS_ENV, "").strip()
    return Path(setting).expanduser() if setting else Path(__file__).resolve().parent.parent / "checkpoints"


def not_writable(folder: Path, err: OSError) -> WeightsError:
    if folder.exists() and not folder.is_dir():
        fix = f"It is a file, not a folder: set {CHECKPOINTS_ENV} to a folder (it holds the prepared weights, about "
        fix += "800 MB), or unset it to use checkpoints/ beside the notebooks, then run again."
    else:
        fix = f"Make it writable, or set {CHECKPOINTS_ENV} to a writable folder (it holds the prepared weights, "
        fix += "about 800 MB), then run again."
    cause = f"The checkpoints folder {folder} cannot be written ({err.strerror or type(err).__name__})."
    return WeightsError(Failure.CHECKPOINTS_NOT_WRITABLE, cause, fix)


def writable_checkpoints_dir() -> Path:
    """The checkpoints folder, created if needed and checked writable: else the package's error naming it
    and the setting, before any work (a conversion, a download) is spent on files it could not keep."""
    folder = checkpoints_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".write-probe."):
            pass
    except OSError as err:
        raise not_writable(folder, err) from err
    return folder


_LOCKS: dict = {}


def preparation_lock():
    """A lock file in the checkpoints folder, held while weights are prepared: one preparer at a time.

    Other processes (a second notebook, a test run) wait for it, then reuse what the first built.
    The operating system releases it when its process dies, so a killed run never leaves it held.
    The lock object is shared within a process, so taking it again there (reentrant) cannot deadlock.
    Raises WeightsError (CHECKPOINTS_NOT_WRITABLE) when the folder cannot be written.
    """
    from filelock import FileLock

    path = writable_checkpoints_dir() / LOCK_NAME
    lock = _LOCKS.setdefault(str(path), FileLock(str(path), timeout=LOCK_TIMEOUT))
    return _holding(lock, path)


@contextlib.contextmanager
def _holding(lock, path: Path):
    from filelock import Timeout

    try:
        lock.acquire()
    except Timeout as err:
        raise WeightsError(
            Failure.LOCK_TIMEOUT,
            f"Another process has been preparing weights under {path.parent} for {LOCK_TIMEOUT} s "
            f"(it holds {path.name}).", "Wait for it to finish, or stop it and run again.") from err
    except OSError as err:  # e.g. the lock file left read-only by another user
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise not_writable(path.parent, err) from err
        raise
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def temporary(target: Path):
    """A unique temporary path beside `target` (same folder, so os.replace is atomic); removed if left over.

    Write it, then `os.replace(partial, target)`: the target is then either the old file or the whole new one.
    """
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)  # after os.replace it no longer exists


def write_text_atomically(target: Path, text: str) -> None:
    with temporary(target) as partial:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, target)


def remove_stale_temporaries(folder: Path, pattern: str = "*.tmp") -> None:
    """Delete temporaries a killed run left behind; call it only while holding the preparation lock."""
    for path in folder.glob(pattern):
        path.unlink(missing_ok=True)


def file_digest(path: Path, algorithm: str = "sha256", header: bytes = b"") -> str:
    """Hex digest of `header` followed by the file's bytes, read in 4 MiB blocks."""
    digest = hashlib.new(algorithm)
    digest.update(header)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, files: tuple[str, ...], source: dict, **extra) -> dict:
    """Record the folder's `files` (size, sha256), their `source` and `extra` fields; written last, atomically.

    Layout: {"source": {...}, "files": {name: {"size": bytes, "sha256": hex}}, **extra}.
    """
    manifest = {
        "source": source,
        "files": {name: {"size": (folder / name).stat().st_size, "sha256": file_digest(folder / name)}
                  for name in files},
        **extra,
    }
    write_text_atomically(folder / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


def manifest_problem(folder: Path, files: tuple[str, ...], expected_source: dict | None) -> Problem | None:
    """None when the manifest lists every one of `files`, each matches it (size, sha256), and it records
    `expected_source` (every key of it; None: any source). Otherwise why the folder must be (re)built."""
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        return Problem(FolderProblem.NO_MANIFEST)
    except (OSError, ValueError) as err:
        return Problem(FolderProblem.UNREADABLE_MANIFEST, detail=type(err).__name__)
    try:
        recorded = manifest.get("source", {})
        if expected_source is not None and {key: recorded.get(key) for key in expected_source} != expected_source:
            return Problem(FolderProblem.SOURCE_CHANGED)
        listed = manifest["files"]
        for name in files:  # a manifest listing fewer files (even none) vouches for nothing
            if name not in listed:
                return Problem(FolderProblem.FILES_NOT_LISTED, file=name)
        for name in files:
            path, meta = folder / name, listed[name]
            if not path.exists():
                return Problem(FolderProblem.FILE_MISSING, file=name)
            if path.stat().st_size != meta["size"] or file_digest(path) != meta["sha256"]:
                return Problem(FolderProblem.FILE_CHANGED, file=name)
        return None
    except (OSError, KeyError, TypeError, AttributeError) as err:
        return Problem(FolderProblem.UNREADABLE_MANIFEST, detail=type(err).__name__)


def progress_wanted() -> bool:
    """Progress bars for a person watching: a terminal or an interactive notebook.

    Runs whose outputs are kept (support/run_notebooks.py, nbval, CI) turn them off with the ecosystem's own
    switches, HF_HUB_DISABLE_PROGRESS_BARS=1 (huggingface_hub) or TQDM_DISABLE=1 (tqdm), so that no
    bar is stored in a notebook or log. Output piped to a file never gets one either.
    """
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
