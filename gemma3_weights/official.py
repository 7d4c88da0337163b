"""Official weights: `google/gemma-3-270m` (or `-it`) from the Hugging Face hub, in its shared cache.

The repositories are gated: downloading needs a Hugging Face token whose account has accepted
Google's license. `official_weights_folder` decides within seconds whether that can work (no
token, offline mode, hub unreachable, license not accepted, ...) and otherwise raises
`OfficialWeightsUnavailable`, whose `kind` says what went wrong, `problem` states it and `fix` says
what to do.

Files go to the shared Hugging Face cache (`hf_hub_download`, as transformers does), so a reader who
already has the model downloads nothing; each repository is pinned to one commit. Every file is
checked against the hub's own checksum before it is used: the cache names each file's blob after
its sha256 (git's sha1 for small files). Where the cache holds plain copies (no symlinks, e.g. on
Windows without developer mode), the checksum the hub reported at download time is kept in
`checkpoints/official-checksums.json`. Intact cached files are reused without touching the network.
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
from pathlib import Path

from huggingface_hub import (
    auth_check,
    constants,
    get_hf_file_metadata,
    get_token,
    hf_hub_download,
    hf_hub_url,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import disable_progress_bars
from safetensors import SafetensorError, safe_open

from .outcomes import Action, DamagedFile, Failure, OfficialWeightsUnavailable, Preparation, WeightsError
from .storage import checkpoints_dir, file_digest, not_writable, progress_wanted, write_text_atomically

FILES = ("model.safetensors", "tokenizer.json")
# The commits this project was written against (pinned, so that the hub changing a file cannot change
# what the notebooks load). Another repository, or revision=..., can be asked for explicitly.
REVISIONS = {
    "google/gemma-3-270m": "9b0cfec892e2bc2afd938c98eabe4e4a7b1e0ca1",
    "google/gemma-3-270m-it": "ac82b4e820549b854eebf28ce6dedaf9fdfa17b3",
}
CHECKSUMS = "official-checksums.json"  # under checkpoints/: the hub's checksums of plain (non-symlink) cache copies
MISSING = "missing"
UNVERIFIED = "no checksum from the hub is known for it"
OFFLINE_MODE = (Failure.OFFLINE_MODE, "Hugging Face offline mode is on (HF_HUB_OFFLINE=1).",
                "Unset HF_HUB_OFFLINE to download the official weights.")


def _hub_digest(path: Path, algorithm: str) -> str:
    """The file's checksum as the hub computes it: sha256 of the bytes, or git's blob id (sha1 over a header
    and the bytes)."""
    header = b"blob %d\0" % path.stat().st_size if algorithm == "sha1" else b""
    return file_digest(path, algorithm, header)


def hub_checksum(path: Path, recorded: dict | None = None) -> str | None:
    """The hub's checksum of a cached file: its blob's name, else the one recorded at download time.

    A sha256 (64 hex digits, large files kept in LFS) or git's sha1 (40, small files); None when unknown.
    """
    blob = Path(os.path.realpath(path))
    if blob.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", blob.name):
        return blob.name
    return (recorded or {}).get(str(path))


def file_problem(path: Path, checksum: str | None = None) -> str | None:
    """None when the file is complete, readable and (given the hub's checksum) intact, else what is wrong."""
    if not path.exists():
        return MISSING
    if checksum is not None:
        algorithm = "sha256" if len(checksum) == 64 else "sha1"
        actual = _hub_digest(path, algorithm)
        if actual != checksum:
            return f"its {algorithm} is {actual[:12]}..., the hub's is {checksum[:12]}..."
    try:
        if path.suffix == ".safetensors":
            # Opening reads the header and checks that the file covers every tensor it lists,
            # so a truncated download is caught without loading 500 MB.
            with safe_open(str(path), framework="pt") as f:
                if not list(f.keys()):
                    return "it holds no tensors"
        else:
            json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, SafetensorError) as err:  # JSON and decoding errors are ValueErrors
        return f"{type(err).__name__}: {err}"
    return None


def _recorded_checksums() -> dict:
    try:
        return json.loads((checkpoints_dir() / CHECKSUMS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _record_checksums(new: dict) -> None:
    path = checkpoints_dir() / CHECKSUMS
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(_recorded_checksums() | new, indent=2))
    except OSError as err:
        raise not_writable(path.parent, err) from err


def _cached(repo_id: str, revision: str) -> dict:
    """{file name: its path in the Hugging Face cache, or None}, without touching the network."""
    paths = {}
    for name in FILES:
        found = try_to_load_from_cache(repo_id, name, revision=revision)
        paths[name] = Path(found) if isinstance(found, str) else None
    return paths


def _problems(paths: dict) -> dict:
    recorded = _recorded_checksums()
    problems = {}
    for name, path in paths.items():
        checksum = None if path is None else hub_checksum(path, recorded)
        if path is None or not path.exists():
            problems[name] = MISSING
        elif checksum is None:  # a plain copy that this code did not download: checked once it is fetched
            problems[name] = UNVERIFIED
        else:
            problems[name] = file_problem(path, checksum)
    return problems


def official_weights_folder(repo_id: str, timeout: float = 5.0, revision: str | None = None) -> Preparation:
    """Download (once) `model.safetensors` and `tokenizer.json` of `repo_id`; return the folder and what was done.

    The folder is the repository's snapshot in the Hugging Face cache. `revision` defaults to the
    commit pinned in REVISIONS ("main" for other repositories). `timeout` bounds, in seconds, the
    hub check made before any download, so that a machine without network gets its answer quickly.
    """
    revision = revision or REVISIONS.get(repo_id, "main")
    paths = _cached(repo_id, revision)
    problems = _problems(paths)
    todo = [name for name, problem in problems.items() if problem]
    if not todo:
        return Preparation(paths[FILES[0]].parent, Action.ALREADY_DOWNLOADED)
    damaged = [name for name in todo if problems[name] not in (MISSING, UNVERIFIED)]
    damaged_files = tuple(DamagedFile(name, os.path.realpath(paths[name]), problems[name]) for name in damaged)

    def unavailable(kind: Failure, problem: str, fix: str) -> OfficialWeightsUnavailable:
        return OfficialWeightsUnavailable(kind, problem, fix, repo_id=repo_id, damaged=damaged_files)

    try:
        token = get_token()
    except Exception as err:  # e.g. a failed OIDC token exchange
        raise unavailable(Failure.TOKEN_UNREADABLE, "The Hugging Face token could not be read.",
                          f"Check `hf auth whoami` ({type(err).__name__}: {err}).") from err
    if not token:
        raise unavailable(
            Failure.NO_TOKEN, "No Hugging Face token is configured.",
            f"{repo_id} is gated: accept its license at https://huggingface.co/{repo_id}, then run "
            "`hf auth login` (or set the HF_TOKEN environment variable) and run again.")
    if constants.HF_HUB_OFFLINE:
        raise unavailable(*OFFLINE_MODE)
    try:
        # auth_check answers GatedRepoError & co. in one small request, before any large download.
        _within(timeout, lambda: auth_check(repo_id, token=token))
        if not progress_wanted():  # huggingface_hub's own bars, for people watching only
            disable_progress_bars()
        checksums = {}
        for name in todo:
            # force_download: fetch a damaged blob again rather than trust the cached one.
            path = Path(hf_hub_download(repo_id, name, revision=revision, token=token, etag_timeout=timeout,
                                        force_download=name in damaged))
            paths[name] = path
            if hub_checksum(path) is None:  # a plain copy: keep the checksum the hub states for it
                metadata = get_hf_file_metadata(hf_hub_url(repo_id, name, revision=revision), token=token,
                                                timeout=timeout)
                checksums[str(path)] = metadata.etag
        if checksums:
            _record_checksums(checksums)
    except WeightsError:
        raise
    except Exception as err:
        raise unavailable(*_explain(err, repo_id, timeout)) from err

    still = {name: problem for name, problem in _problems(paths).items() if problem}
    if still:
        name, problem = next(iter(still.items()))
        raise unavailable(Failure.DOWNLOAD_UNUSABLE,
                          f"The downloaded {name} of {repo_id} is not usable ({problem}).",
                          f"Delete {os.path.realpath(paths[name])} and run again.")
    return Preparation(paths[FILES[0]].parent, Action.DOWNLOADED, replaced=tuple(damaged))


def _within(timeout: float, fn) -> None:
    """Run fn(), raising TimeoutError after `timeout` s.

    The call runs in a daemon thread because a DNS lookup or dropped packets can block far longer
    than any socket timeout the HTTP client applies; an abandoned thread ends on its own later.
    """
    outcome: list[BaseException] = []

    def target():
        try:
            fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread below
            outcome.append(err)

    thread = threading.Thread(target=target, name="hf-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if outcome:
        raise outcome[0]


def _explain(err: Exception, repo_id: str, timeout: float) -> tuple[Failure, str, str]:
    """What went wrong, the problem and the fix, for an error raised while talking to the hub."""
    url = f"https://huggingface.co/{repo_id}"
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, OfflineModeIsEnabled):
        return OFFLINE_MODE
    if isinstance(err, GatedRepoError):  # before RepositoryNotFoundError: it is a subclass
        return (Failure.LICENSE_NOT_ACCEPTED, f"The license of {repo_id} has not been accepted for this token.",
                f"Accept it at {url} while logged in as the token's account, then run again.")
    if isinstance(err, RepositoryNotFoundError):
        return (Failure.REPO_NOT_FOUND, f"{repo_id} was not found on the hub, or this token may not see it.",
                "Check the name (google/gemma-3-270m or google/gemma-3-270m-it) and the token.")
    if isinstance(err, HfHubHTTPError) and status == 401:
        return (Failure.TOKEN_REJECTED, "The Hugging Face token was rejected (HTTP 401).",
                ("Create a read token at https://huggingface.co/settings/tokens, then run "
                 "`hf auth login` (or set HF_TOKEN)."))
    if isinstance(err, HfHubHTTPError) and status == 403:
        return (Failure.TOKEN_FORBIDDEN, f"This Hugging Face token may not read {repo_id} (HTTP 403).",
                ("Use a read token, or allow a fine-grained token to read public gated "
                 f"repositories, and accept the license at {url}."))
    if isinstance(err, HfHubHTTPError):
        return (Failure.HUB_ERROR, f"The Hugging Face hub answered with an error (HTTP {status}).",
                f"Try again later ({type(err).__name__}: {err}).")
    if isinstance(err, TimeoutError) or "Timeout" in type(err).__name__:
        return (Failure.HUB_TIMEOUT, f"The Hugging Face hub did not answer within {timeout:g} s.",
                "Check the internet connection (or a proxy or firewall) and run again.")
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS):
        return (Failure.CACHE_NOT_WRITABLE,
                f"The downloaded files could not be written to the Hugging Face cache ({err.strerror}).",
                "Free disk space or fix the permissions of the cache folder (HF_HUB_CACHE), then run again.")
    if isinstance(err, LocalEntryNotFoundError):  # hf_hub_download's "could not connect"
        return (Failure.HUB_UNREACHABLE, "The Hugging Face hub could not be reached.",
                "Check the internet connection and run again.")
    return (Failure.HUB_UNREACHABLE, "The Hugging Face hub could not be reached.",
            f"Check the internet connection and run again ({type(err).__name__}: {err}).")
