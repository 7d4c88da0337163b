"""The official-weights source decides quickly and clearly, checks what it loads, and "auto" falls back.

No test here downloads anything: the hub is either unreachable (this machine) or replaced by a
stub that raises the real huggingface_hub exceptions, or that writes files into a scratch Hugging
Face cache in either of its layouts (blobs named by sha256 with symlinks to them, or plain copies).
Outcomes are values: tests check an error's `kind` and fields and a preparation's `action`, and at most
one key phrase of a message. Nothing is timed: "quickly" is checked as "without calling the hub" or
"calling it once".
"""

import hashlib
import importlib
import json
import os
import threading
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
    Action,
    Failure,
    OfficialWeightsUnavailable,
    Preparation,
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


def test_no_token_is_decided_without_network(no_network):
    with pytest.raises(OfficialWeightsUnavailable) as err:
        official.official_weights_folder(REPO, timeout=5)
    assert err.value.kind is Failure.NO_TOKEN
    assert f"https://huggingface.co/{REPO}" in err.value.fix  # where to accept the license
    assert OfficialWeightsUnavailable.OFFLINE_HINT in err.value.fix


def test_unreachable_hub_for_real_is_asked_once(token, monkeypatch):
    """This machine cannot reach huggingface.co (where it can, the fake token is rejected instead): one
    question to the hub, bounded by the timeout, no retry, no download."""
    calls = []
    real_auth_check = official.auth_check
    monkeypatch.setattr(official, "auth_check", lambda *a, **k: calls.append(a) or real_auth_check(*a, **k))
    monkeypatch.setattr(official, "hf_hub_download", fail_if_called)
    with pytest.raises(OfficialWeightsUnavailable) as err:
        official.official_weights_folder(REPO, timeout=2)
    assert len(calls) == 1
    assert err.value.kind in (Failure.HUB_UNREACHABLE, Failure.HUB_TIMEOUT, Failure.TOKEN_REJECTED,
                              Failure.REPO_NOT_FOUND)


def test_hub_that_never_answers_is_given_up_after_the_timeout(token, monkeypatch):
    """A hung DNS lookup: the question is abandoned after the timeout (were it waited for, the hung call would
    return after 30 s and the download that follows would fail the test as a hub error, not a timeout)."""
    release = threading.Event()
    monkeypatch.setattr(official, "auth_check", lambda *a, **k: release.wait(30))
    monkeypatch.setattr(official, "hf_hub_download", fail_if_called)
    try:
        with pytest.raises(OfficialWeightsUnavailable) as err:
            official.official_weights_folder(REPO, timeout=0.5)
    finally:
        release.set()
    assert err.value.kind is Failure.HUB_TIMEOUT and "0.5 s" in err.value.problem


@pytest.mark.parametrize("error, kind", [
    (ConnectionError("[Errno -2] Name or service not known"), Failure.HUB_UNREACHABLE),
    (OfflineModeIsEnabled("offline mode is enabled"), Failure.OFFLINE_MODE),
    (http_error(GatedRepoError, 403), Failure.LICENSE_NOT_ACCEPTED),
    (http_error(RepositoryNotFoundError, 404), Failure.REPO_NOT_FOUND),
    (http_error(HfHubHTTPError, 401), Failure.TOKEN_REJECTED),
    (http_error(HfHubHTTPError, 403), Failure.TOKEN_FORBIDDEN),
    (http_error(HfHubHTTPError, 503), Failure.HUB_ERROR),
])
def test_hub_errors_become_clear_causes(token, monkeypatch, error, kind):
    monkeypatch.setattr(official, "auth_check", raising(error))
    monkeypatch.setattr(official, "hf_hub_download", fail_if_called)
    with pytest.raises(OfficialWeightsUnavailable) as err:
        official.official_weights_folder(REPO, timeout=2)
    assert err.value.kind is kind and err.value.repo_id == REPO
    assert OfficialWeightsUnavailable.OFFLINE_HINT in err.value.fix


def test_gated_error_says_where_to_accept_the_license(token, monkeypatch):
    monkeypatch.setattr(official, "auth_check", raising(http_error(GatedRepoError, 403)))
    with pytest.raises(OfficialWeightsUnavailable) as err:
        official.official_weights_folder(REPO, timeout=2)
    assert f"https://huggingface.co/{REPO}" in err.value.fix


def test_offline_mode_is_decided_without_network(token, no_network, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfficialWeightsUnavailable) as err:
        official.official_weights_folder(REPO)
    assert err.value.kind is Failure.OFFLINE_MODE


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
    assert official.official_weights_folder(REPO) == Preparation(snapshot(), Action.DOWNLOADED)
    folder = snapshot()
    assert hub.calls == [(REPO, name, official.REVISIONS[REPO], "hf_not_a_real_token", False)
                         for name in official.FILES]
    assert all((folder / name).read_bytes() == hub.files[name] for name in official.FILES)


def test_pinned_revisions_are_commit_hashes():
    assert set(official.REVISIONS) == {"google/gemma-3-270m", "google/gemma-3-270m-it"}
    assert all(len(rev) == 40 and int(rev, 16) >= 0 for rev in official.REVISIONS.values())


def test_a_revision_can_be_asked_for(hub, token):
    folder = official.official_weights_folder(REPO, revision="main").folder
    assert folder == snapshot().parent / "main" and {call[2] for call in hub.calls} == {"main"}


def test_downloaded_files_are_reused_without_token_or_network(hub, token, monkeypatch, tmp_path):
    official.official_weights_folder("google/gemma-3-270m-it")
    monkeypatch.delenv("HF_TOKEN")
    for name in ("auth_check", "hf_hub_download", "get_hf_file_metadata"):
        monkeypatch.setattr(official, name, fail_if_called)
    prepared = official.official_weights_folder("google/gemma-3-270m-it")
    assert prepared == Preparation(snapshot("google/gemma-3-270m-it"), Action.ALREADY_DOWNLOADED)
    weights = prepare_weights("official", "google/gemma-3-270m-it")
    assert (weights.folder, weights.instruction_tuned) == (prepared.folder, True)
    assert str(tmp_path) not in weights.reason  # a line for the reader, never a machine path


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
    assert err.value.kind is Failure.HUB_UNREACHABLE
    [damaged] = err.value.damaged
    assert (damaged.name, damaged.path) == (name, os.path.realpath(path))
    assert damaged.path in err.value.fix  # the file to delete, named in the message
    if damage is flip_a_byte_in_the_middle:
        assert damaged.problem.startswith("its sha256 is")

    with pytest.raises(OfficialWeightsUnavailable) as err:  # never loaded
        prepare_weights("official", REPO)
    assert [d.name for d in err.value.damaged] == [name]


@pytest.mark.parametrize("name, damage", DAMAGES)
def test_a_damaged_cached_file_is_downloaded_again(hub, token, name, damage):
    official.official_weights_folder(REPO)
    (snapshot() / name).write_bytes(damage(hub.files[name]))
    hub.calls.clear()
    assert official.official_weights_folder(REPO, timeout=2) == Preparation(snapshot(), Action.DOWNLOADED,
                                                                            replaced=(name,))
    assert [(call[1], call[4]) for call in hub.calls] == [(name, True)]  # only that file, forcibly
    assert (snapshot() / name).read_bytes() == hub.files[name]


def test_a_download_that_does_not_match_the_hubs_checksum_is_refused(hub, token, monkeypatch):
    if hub.layout == "blobs":
        pytest.skip("in the blob layout the checksum is the file's name, set by the download itself")
    monkeypatch.setattr(official, "get_hf_file_metadata", lambda *a, **k: SimpleNamespace(etag="0" * 64))
    with pytest.raises(OfficialWeightsUnavailable) as err:
        official.official_weights_folder(REPO)
    assert err.value.kind is Failure.DOWNLOAD_UNUSABLE
    assert os.path.realpath(snapshot() / "model.safetensors") in err.value.fix  # the file to delete


def test_a_plain_copy_without_a_known_checksum_is_not_trusted(tmp_path, no_network):
    folder = snapshot()
    folder.mkdir(parents=True)
    for name, data in hub_files().items():
        (folder / name).write_bytes(data)  # e.g. put there by another tool: nothing to check it against
    with pytest.raises(OfficialWeightsUnavailable) as err:
        official.official_weights_folder(REPO)
    assert err.value.kind is Failure.NO_TOKEN


def test_auto_without_token_falls_back_to_offline_and_says_why(tmp_path, no_network, monkeypatch):
    offline = Preparation(tmp_path, Action.REUSED)
    monkeypatch.setattr(gemma3_weights, "offline_weights_folder", lambda: offline)
    with pytest.raises(OfficialWeightsUnavailable) as err:
        official.official_weights_folder(REPO)
    weights = prepare_weights("auto")
    assert (weights.folder, weights.instruction_tuned) == (tmp_path, False)
    assert err.value.problem.rstrip(".") in weights.reason  # why, in the reader's line


def test_official_without_token_raises(tmp_path, no_network, monkeypatch):
    monkeypatch.setattr(gemma3_weights, "offline_weights_folder", fail_if_called)
    with pytest.raises(OfficialWeightsUnavailable) as err:
        prepare_weights("official")
    assert err.value.kind is Failure.NO_TOKEN


def test_unknown_source_raises(monkeypatch):
    monkeypatch.setattr(gemma3_weights, "offline_weights_folder", fail_if_called)
    with pytest.raises(WeightsError) as err:
        prepare_weights("nonsense")
    assert err.value.kind is Failure.UNKNOWN_SOURCE and "'nonsense'" in err.value.problem
