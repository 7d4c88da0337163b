"""Official weights: `google/gemma-3-270m` (or `-it`) from the Hugging Face hub, in its shared cache.

The repositories are gated: downloading needs a Hugging Face token whose account has accepted
Google's license. `official_weights_folder` decides within seconds whether that can work (no
token, offline mode, hub unreachable, license not accepted, ...) and otherwise raises
`OfficialWeightsUnavailable`, whose first sentence states the cause and whose next sentences say
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
import hashlib
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

from .errors import OfficialWeightsUnavailable
from .gguf_convert import checkpoints_dir, progress_wanted

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
OFFLINE_HINT = 'Or use source="offline": the offline default needs no account.'
OFFLINE_MODE = ("Hugging Face offline mode is on (HF_HUB_OFFLINE=1).",
                "Unset HF_HUB_OFFLINE to download the official weights.")


def _sha(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    if algorithm == "sha1":  # git's blob id: sha1 over a header and the contents
        digest.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


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
        actual = _sha(path, algorithm)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(_recorded_checksums() | new, indent=2), encoding="utf-8")
    os.replace(partial, path)


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


def official_weights_folder(repo_id: str, timeout: float = 5.0, revision: str | None = None) -> tuple[Path, str]:
    """Download (once) `model.safetensors` and `tokenizer.json` of `repo_id`; return (folder, what happened).

    The folder is the repository's snapshot in the Hugging Face cache. `revision` defaults to the
    commit pinned in REVISIONS ("main" for other repositories). `timeout` bounds, in seconds, the
    hub check made before any download, so that a machine without network gets its answer quickly.
    """
    revision = revision or REVISIONS.get(repo_id, "main")
    paths = _cached(repo_id, revision)
    problems = _problems(paths)
    todo = [name for name, problem in problems.items() if problem]
    if not todo:
        return paths[FILES[0]].parent, "already downloaded"
    damaged = [name for name in todo if problems[name] not in (MISSING, UNVERIFIED)]
    notes = [f"The cached copy of {name} of {repo_id} is damaged ({problems[name]}): delete "
             f"{os.path.realpath(paths[name])}, or run again where the hub can be reached to download it again."
             for name in damaged]

    def unavailable(cause: str, *advice: str) -> OfficialWeightsUnavailable:
        return OfficialWeightsUnavailable(" ".join([cause, *notes, *advice, OFFLINE_HINT]))

    try:
        token = get_token()
    except Exception as err:  # e.g. a failed OIDC token exchange
        raise unavailable("The Hugging Face token could not be read.",
                          f"Check `hf auth whoami` ({type(err).__name__}: {err}).") from err
    if not token:
        raise unavailable(
            "No Hugging Face token is configured.",
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
    except Exception as err:
        raise unavailable(*_explain(err, repo_id, timeout)) from err

    still = {name: problem for name, problem in _problems(paths).items() if problem}
    if still:
        name, problem = next(iter(still.items()))
        raise unavailable(f"The downloaded {name} of {repo_id} is not usable ({problem}).",
                          f"Delete {os.path.realpath(paths[name])} and run again.")
    what = "downloaded"
    if damaged:
        what += f", replacing damaged {' and '.join(damaged)}"
    return paths[FILES[0]].parent, what


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


def _explain(err: Exception, repo_id: str, timeout: float) -> tuple[str, ...]:
    """Cause and advice sentences for an error raised while talking to the hub."""
    url = f"https://huggingface.co/{repo_id}"
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, OfflineModeIsEnabled):
        return OFFLINE_MODE
    if isinstance(err, GatedRepoError):  # before RepositoryNotFoundError: it is a subclass
        return (f"The license of {repo_id} has not been accepted for this token.",
                f"Accept it at {url} while logged in as the token's account, then run again.")
    if isinstance(err, RepositoryNotFoundError):
        return (f"{repo_id} was not found on the hub, or this token may not see it.",
                "Check the name (google/gemma-3-270m or google/gemma-3-270m-it) and the token.")
    if isinstance(err, HfHubHTTPError) and status == 401:
        return ("The Hugging Face token was rejected (HTTP 401).",
                ("Create a read token at https://huggingface.co/settings/tokens, then run "
                 "`hf auth login` (or set HF_TOKEN)."))
    if isinstance(err, HfHubHTTPError) and status == 403:
        return (f"This Hugging Face token may not read {repo_id} (HTTP 403).",
                ("Use a read token, or allow a fine-grained token to read public gated "
                 f"repositories, and accept the license at {url}."))
    if isinstance(err, HfHubHTTPError):
        return (f"The Hugging Face hub answered with an error (HTTP {status}).",
                f"Try again later ({type(err).__name__}: {err}).")
    if isinstance(err, TimeoutError) or "Timeout" in type(err).__name__:
        return (f"The Hugging Face hub did not answer within {timeout:g} s.",
                "Check the internet connection (or a proxy or firewall) and run again.")
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS):
        return (f"The downloaded files could not be written to the Hugging Face cache ({err.strerror}).",
                "Free disk space or fix the permissions of the cache folder (HF_HUB_CACHE), then run again.")
    if isinstance(err, LocalEntryNotFoundError):  # hf_hub_download's "could not connect"
        return ("The Hugging Face hub could not be reached.",
                "Check the internet connection and run again.")
    return ("The Hugging Face hub could not be reached.",
            f"Check the internet connection and run again ({type(err).__name__}: {err}).")
