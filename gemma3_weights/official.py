"""Official weights: `google/gemma-3-270m` (or `-it`) downloaded from the Hugging Face hub.

The repositories are gated: downloading needs a Hugging Face token whose account has accepted
Google's license. `official_weights_folder` decides within seconds whether that can work (no
token, offline mode, hub unreachable, license not accepted, ...) and otherwise raises
`OfficialWeightsUnavailable`, whose first sentence states the cause and whose next sentences say
what to do. Files already downloaded and intact are reused without touching the network.
"""

from __future__ import annotations

import errno
import json
import threading
from pathlib import Path

from huggingface_hub import auth_check, constants, get_token, hf_hub_download
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
MISSING = "missing"
OFFLINE_HINT = 'Or use source="offline": the offline default needs no account.'
OFFLINE_MODE = ("Hugging Face offline mode is on (HF_HUB_OFFLINE=1).",
                "Unset HF_HUB_OFFLINE to download the official weights.")


def file_problem(path: Path) -> str | None:
    """None when the file is complete and readable, else a few words saying what is wrong."""
    if not path.exists():
        return MISSING
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


def official_weights_folder(repo_id: str, timeout: float = 5.0) -> tuple[Path, str]:
    """Download (once) `model.safetensors` and `tokenizer.json` of `repo_id`; return (folder, what happened).

    `timeout` bounds, in seconds, the hub check made before any download, so that a machine
    without network gets its answer quickly.
    """
    folder = checkpoints_dir() / repo_id.split("/")[-1]
    problems = {name: file_problem(folder / name) for name in FILES}
    todo = [name for name, problem in problems.items() if problem]
    if not todo:
        return folder, "already downloaded"
    damaged = [name for name in todo if problems[name] != MISSING]
    notes = [f"The local copy of checkpoints/{folder.name}/{name} is damaged ({problems[name]}) "
             "and must be downloaded again." for name in damaged]

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
        for name in todo:
            # force_download: the hub's local_dir metadata may call a damaged file up to date.
            hf_hub_download(repo_id, name, local_dir=folder, token=token, etag_timeout=timeout,
                            force_download=name in damaged)
    except Exception as err:
        raise unavailable(*_explain(err, repo_id, timeout)) from err

    still = {name: problem for name in FILES if (problem := file_problem(folder / name))}
    if still:
        name, problem = next(iter(still.items()))
        raise unavailable(f"The downloaded {name} of {repo_id} is not usable ({problem}).",
                          f"Delete checkpoints/{folder.name} and run again.")
    what = "downloaded"
    if damaged:
        what += f", replacing damaged {' and '.join(damaged)}"
    return folder, what


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
        return (f"The downloaded files could not be written under checkpoints/ ({err.strerror}).",
                "Free disk space or fix the folder's permissions, then run again.")
    if isinstance(err, LocalEntryNotFoundError):  # hf_hub_download's "could not connect"
        return ("The Hugging Face hub could not be reached.",
                "Check the internet connection and run again.")
    return ("The Hugging Face hub could not be reached.",
            f"Check the internet connection and run again ({type(err).__name__}: {err}).")
