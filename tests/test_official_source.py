"""The official-weights source decides quickly and clearly, checks what it loads, and "auto" falls back.

No test here downloads anything: the hub is either unreachable (this machine) or replaced by a
stub that raises the real huggingface_hub exceptions, or that writes files into a scratch Hugging
Face cache in either of its layouts (blobs named by sha256 with symlinks to them, or plain copies).
"""

import hashlib
import importlib
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    Response,
)
from safetensors.torch import save

import gemma3_weights
from gemma3_weights import (
    OfficialWeightsUnavailable,
    WeightsError,
    official,
    prepare_weights,
)

REPO = "google/gemma-3-270m"


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    """No real token, no real checkpoints, offline mode off: each test sets what it needs."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    token_path = tmp_path / "hf_home" / "token"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(token_path))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_path))  # read once, at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))  # read at each call
    monkeypatch.setenv("GEMMA3_CHECKPOINTS", str(tmp_path / "checkpoints"))


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")


def raising(error):
    """A stand-in for a hub function that raises `error`."""
    def stub(*args, **kwargs):
        raise error
    return stub


fail_if_called = raising(AssertionError("called a function the test forbids"))


@pytest.fixture
def no_network(monkeypatch):
    """Every hub call the module makes fails the test."""
    monkeypatch.setattr(official, "auth_check", fail_if_called)
    monkeypatch.setattr(official, "hf_hub_download", fail_if_called)
    monkeypatch.setattr(official, "get_hf_file_metadata", fail_if_called)


def http_error(cls, status):
    """A real huggingface_hub HTTP error carrying a response with this status."""
    http = importlib.import_module(Response.__module__)  # httpx-like module this version uses
    url = f"https://huggingface.co/api/models/{REPO}/auth-check"
    return cls(f"{status} Client Error", response=Response(status, request=http.Request("GET", url)))


def first_sentence(err) -> str:
    return str(err).split(". ")[0]  # what prepare_weights("auto") shows the reader


def test_no_token_is_decided_at_once_without_network(no_network):
    start = time.perf_counter()
    with pytest.raises(OfficialWeightsUnavailable) as err:
        official.official_weights_folder(REPO, timeout=5)
    assert time.perf_counter() - start < 1
    assert first_sentence(err.value) == "No Hugging Face token is configured"
    assert "hf auth login" in str(err.value) and "HF_TOKEN" in str(err.value)
    assert f"https://huggingface.co/{REPO}" in str(err.value)
    assert 'source="offline"' in str(err.value) and "needs no account" in str(err.value)


def test_unreachable_hub_for_real_is_decided_within_the_timeout(token):
    """This machine cannot reach huggingface.co; where it can, the fake token is rejected instead."""
    start = time.perf_counter()
    with pytest.raises(OfficialWeightsUnavailable) as err:
        official.official_weights_folder(REPO, timeout=2)
    assert time.perf_counter() - start < 2 + 1
    assert first_sentence(err.value) in (
        "The Hugging Face hub could not be reached", "The Hugging Face hub did not answer within 2 s",
        "The Hugging Face token was rejected (HTTP 401)",
        f"{REPO} was not found on the hub, or this token may not see it",
    )


def test_hub_that_never_answers_is_given_up_after_the_timeout(token, monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(official, "auth_check", lambda *a, **k: release.wait(30))  # like a hung DNS lookup
    monkeypatch.setattr(official, "hf_hub_download", fail_if_called)
    start = time.perf_counter()
    try:
        with pytest.raises(OfficialWeightsUnavailable) as err:
            official.official_weights_folder(REPO, timeout=0.5)
    finally:
        release.set()
    assert time.perf_counter() - start < 0.5 + 1
    assert first_sentence(err.value) == "The Hugging Face hub did not answer within 0.5 s"
    assert 'source="offline"' in str(err.value)


@pytest.mark.parametrize("error, cause", [
    (ConnectionError("[Errno -2] Name or service not known"), "The Hugging Face hub could not be reached"),
    (OfflineModeIsEnabled("offline mode is enabled"), "Hugging Face offline mode is on (HF_HUB_OFFLINE=1)"),
    (http_error(GatedRepoError, 403), f"The license of {REPO} has not been accepted for this token"),
    (http_error(RepositoryNotFoundError, 404), f"{REPO} was not found on the hub, or this token may not see it"),
    (http_error(HfHubHTTPError, 401), "The Hugging Face token was rejected (HTTP 401)"),
    (http_error(HfHubHTTPError, 403), f"This Hugging Face token may not read {REPO} (HTTP 403)"),
    (http_error(HfHubHTTPError, 503), "The Hugging Face hub answered with an error (HTTP 503)"),
])
def test_hub_errors_become_clear_causes(token, monkeypatch, error, cause):
    monkeypatch.setattr(official, "auth_check", raising(error))
    monkeypatch.setattr(official, "hf_hub_download", fail_if_called)
    with pytest.raises(OfficialWeightsUnavailable) as err:
        official.official_weights_folder(REPO, timeout=2)
    assert first_sentence(err.value) == cause
    assert 'source="offline"' in str(err.value)


def test_gated_error_says_where_to_accept_the_license(token, monkeypatch):
    monkeypatch.setattr(official, "auth_check", raising(http_error(GatedRepoError, 403)))
    with pytest.raises(OfficialWeightsUnavailable, match=f"Accept it at https://huggingface.co/{REPO}"):
        official.official_weights_folder(REPO, timeout=2)


def test_offline_mode_is_decided_without_network(token, no_network, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfficialWeightsUnavailable) as err:
        official.official_weights_folder(REPO)
    assert first_sentence(err.value) == "Hugging Face offline mode is on (HF_HUB_OFFLINE=1)"


def hub_files():
    """The files a download brings: a small valid safetensors and tokenizer.json."""
    return {"model.safetensors": save({"model.embed_tokens.weight": torch.arange(32.0).reshape(8, 4)}),
            "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE"}}).encode()}


def symlinks_work(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        (folder / "link").symlink_to("target")
    except OSError:  # e.g. Windows without developer mode: the hub's cache then holds plain copies
        return False
    (folder / "link").unlink()
    return True


@pytest.fixture(params=["blobs", "plain"])
def hub(request, tmp_path, monkeypatch):
    """A stand-in hub that writes into the scratch cache as huggingface_hub does, in one of its layouts.

    "blobs": each file is a symlink into blobs/, named by its sha256 (where symlinks can be made);
    "plain": each file is a plain copy (huggingface_hub's fallback without symlinks).
    """
    if request.param == "blobs" and not symlinks_work(tmp_path / "symlink-probe"):
        pytest.skip("this file system cannot make symlinks, so the cache never holds blobs and links here")
    files = hub_files()
    calls = []

    def download(repo_id, filename, *, revision, token, force_download, **kwargs):
        calls.append((repo_id, filename, revision, token, force_download))
        repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        path = repo / "snapshots" / revision / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        if request.param == "blobs":
            blob = repo / "blobs" / hashlib.sha256(files[filename]).hexdigest()
            blob.parent.mkdir(exist_ok=True)
            if force_download or not blob.exists():
                blob.write_bytes(files[filename])
            path.symlink_to(os.path.relpath(blob, path.parent))
        else:
            path.write_bytes(files[filename])
        return str(path)

    def metadata(url, token, timeout):
        filename = url.rsplit("/", 1)[-1]
        return SimpleNamespace(etag=hashlib.sha256(files[filename]).hexdigest())  # an LFS file's etag

    monkeypatch.setattr(official, "auth_check", lambda *a, **k: None)
    monkeypatch.setattr(official, "hf_hub_download", download)
    monkeypatch.setattr(official, "get_hf_file_metadata", metadata)
    return SimpleNamespace(layout=request.param, files=files, calls=calls)


def snapshot(repo_id=REPO):
    return (Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
            / official.REVISIONS[repo_id])


def test_missing_files_are_downloaded_into_the_shared_cache_at_the_pinned_revision(hub, token):
    folder, what = official.official_weights_folder(REPO)
    assert (folder, what) == (snapshot(), "downloaded")
    assert hub.calls == [(REPO, name, official.REVISIONS[REPO], "hf_not_a_real_token", False)
                         for name in official.FILES]
    assert all((folder / name).read_bytes() == hub.files[name] for name in official.FILES)


def test_pinned_revisions_are_commit_hashes():
    assert set(official.REVISIONS) == {"google/gemma-3-270m", "google/gemma-3-270m-it"}
    assert all(len(rev) == 40 and int(rev, 16) >= 0 for rev in official.REVISIONS.values())


def test_a_revision_can_be_asked_for(hub, token):
    folder, _ = official.official_weights_folder(REPO, revision="main")
    assert folder == snapshot().parent / "main" and {call[2] for call in hub.calls} == {"main"}


def test_downloaded_files_are_reused_without_token_or_network(hub, token, monkeypatch):
    official.official_weights_folder("google/gemma-3-270m-it")
    monkeypatch.delenv("HF_TOKEN")
    for name in ("auth_check", "hf_hub_download", "get_hf_file_metadata"):
        monkeypatch.setattr(official, name, fail_if_called)
    folder, what = official.official_weights_folder("google/gemma-3-270m-it")
    assert (folder, what) == (snapshot("google/gemma-3-270m-it"), "already downloaded")
    weights = prepare_weights("official", "google/gemma-3-270m-it")
    assert (weights.source, weights.instruction_tuned) == ("official", True)
    assert weights.display_folder == ("Hugging Face cache: models--google--gemma-3-270m-it/snapshots/"
                                      + official.REVISIONS["google/gemma-3-270m-it"])


def flip_a_byte_in_the_middle(data):
    """The issue's case: the file still opens as safetensors, but one value is wrong."""
    data = bytearray(data)
    data[len(data) - 20] ^= 0x40  # inside the tensor data, at the end of the file
    return bytes(data)


DAMAGES = [
    ("model.safetensors", flip_a_byte_in_the_middle),
    ("model.safetensors", lambda data: data[: len(data) - 10]),  # a download cut short
    ("model.safetensors", lambda data: b""),
    ("tokenizer.json", lambda data: data[: len(data) // 2]),
]


@pytest.mark.parametrize("name, damage", DAMAGES)
def test_a_damaged_cached_file_is_an_error_naming_it_and_the_fix(hub, token, monkeypatch, name, damage):
    official.official_weights_folder(REPO)
    path = snapshot() / name
    path.write_bytes(damage(hub.files[name]))  # through the link, into the blob, as disk damage would
    if damage is flip_a_byte_in_the_middle:
        assert official.file_problem(path) is None  # it still opens: only the checksum can tell

    monkeypatch.setattr(official, "auth_check", raising(ConnectionError("down")))  # hub unreachable
    with pytest.raises(OfficialWeightsUnavailable) as err:
        official.official_weights_folder(REPO, timeout=2)
    message = str(err.value)
    assert first_sentence(err.value) == "The Hugging Face hub could not be reached"
    assert f"The cached copy of {name} of {REPO} is damaged" in message
    assert f"delete {os.path.realpath(path)}, or run again where the hub can be reached" in message
    if damage is flip_a_byte_in_the_middle:
        assert "its sha256 is" in message and "the hub's is" in message

    with pytest.raises(OfficialWeightsUnavailable, match=f"{name} of {REPO} is damaged"):  # never loaded
        prepare_weights("official", REPO)


@pytest.mark.parametrize("name, damage", DAMAGES)
def test_a_damaged_cached_file_is_downloaded_again(hub, token, name, damage):
    official.official_weights_folder(REPO)
    (snapshot() / name).write_bytes(damage(hub.files[name]))
    hub.calls.clear()
    assert official.official_weights_folder(REPO, timeout=2) == (snapshot(), f"downloaded, replacing damaged {name}")
    assert [(call[1], call[4]) for call in hub.calls] == [(name, True)]  # only that file, forcibly
    assert (snapshot() / name).read_bytes() == hub.files[name]


def test_a_download_that_does_not_match_the_hubs_checksum_is_refused(hub, token, monkeypatch):
    if hub.layout == "blobs":
        pytest.skip("in the blob layout the checksum is the file's name, set by the download itself")
    monkeypatch.setattr(official, "get_hf_file_metadata", lambda *a, **k: SimpleNamespace(etag="0" * 64))
    with pytest.raises(OfficialWeightsUnavailable) as err:
        official.official_weights_folder(REPO)
    assert first_sentence(err.value).startswith(f"The downloaded model.safetensors of {REPO} is not usable (its sha256")
    assert f"Delete {os.path.realpath(snapshot() / 'model.safetensors')} and run again" in str(err.value)


def test_a_plain_copy_without_a_known_checksum_is_not_trusted(tmp_path, no_network):
    folder = snapshot()
    folder.mkdir(parents=True)
    for name, data in hub_files().items():
        (folder / name).write_bytes(data)  # e.g. put there by another tool: nothing to check it against
    with pytest.raises(OfficialWeightsUnavailable, match="No Hugging Face token is configured"):
        official.official_weights_folder(REPO)


def test_auto_without_token_falls_back_to_offline_and_says_why(tmp_path, no_network, monkeypatch):
    monkeypatch.setattr(gemma3_weights, "offline_weights_folder", lambda: (tmp_path, "stub"))
    weights = prepare_weights("auto")
    assert (weights.folder, weights.source, weights.instruction_tuned) == (tmp_path, "offline", False)
    assert "official weights not used: no Hugging Face token is configured" in weights.reason
    assert weights.reason.endswith("(stub)")


def test_official_without_token_raises(tmp_path, no_network, monkeypatch):
    monkeypatch.setattr(gemma3_weights, "offline_weights_folder", fail_if_called)
    with pytest.raises(OfficialWeightsUnavailable, match="No Hugging Face token is configured"):
        prepare_weights("official")


def test_unknown_source_raises(monkeypatch):
    monkeypatch.setattr(gemma3_weights, "offline_weights_folder", fail_if_called)
    with pytest.raises(WeightsError, match="Unknown weights source 'nonsense'"):
        prepare_weights("nonsense")
