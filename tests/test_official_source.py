"""The official-weights source decides quickly and clearly, and "auto" falls back to offline.

No test here downloads anything: the hub is either unreachable (this machine) or replaced by a
stub that raises the real huggingface_hub exceptions.
"""

import importlib
import json
import threading
import time

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
from safetensors.torch import save, save_file

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


def write_download(folder):
    folder.mkdir(parents=True)
    save_file({"model.embed_tokens.weight": torch.zeros(8, 4)}, folder / "model.safetensors")
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))


def test_downloaded_folder_is_reused_without_token_or_network(tmp_path, no_network):
    write_download(tmp_path / "checkpoints" / "gemma-3-270m-it")
    folder, what = official.official_weights_folder("google/gemma-3-270m-it")
    assert folder == tmp_path / "checkpoints" / "gemma-3-270m-it"
    assert what == "already downloaded"
    weights = prepare_weights("official", "google/gemma-3-270m-it")
    assert (weights.source, weights.instruction_tuned) == ("official", True)
    assert weights.display_folder == "checkpoints/gemma-3-270m-it"


@pytest.mark.parametrize("name, damage", [
    ("model.safetensors", lambda data: data[: len(data) - 10]),  # a download cut short
    ("model.safetensors", lambda data: b""),
    ("model.safetensors", lambda data: save({})),  # valid, but holds no tensors
    ("tokenizer.json", lambda data: data[: len(data) // 2]),
])
def test_damaged_file_is_detected_and_downloaded_again(tmp_path, token, monkeypatch, name, damage):
    folder = tmp_path / "checkpoints" / "gemma-3-270m"
    write_download(folder)
    good = (folder / name).read_bytes()
    (folder / name).write_bytes(damage(good))
    assert official.file_problem(folder / name) not in (None, official.MISSING)

    # Hub unreachable: the error names the cause first, then the damaged file.
    monkeypatch.setattr(official, "auth_check", raising(ConnectionError("down")))
    with pytest.raises(OfficialWeightsUnavailable) as err:
        official.official_weights_folder(REPO, timeout=2)
    assert first_sentence(err.value) == "The Hugging Face hub could not be reached"
    assert f"checkpoints/gemma-3-270m/{name} is damaged" in str(err.value)

    # Hub reachable: only the damaged file is fetched again, forcibly.
    calls = []

    def download(repo_id, filename, *, local_dir, force_download, **kwargs):
        calls.append((filename, force_download))
        (local_dir / filename).write_bytes(good)

    monkeypatch.setattr(official, "auth_check", lambda *a, **k: None)
    monkeypatch.setattr(official, "hf_hub_download", download)
    assert official.official_weights_folder(REPO, timeout=2) == (folder, f"downloaded, replacing damaged {name}")
    assert calls == [(name, True)]


def test_missing_files_are_downloaded(tmp_path, token, monkeypatch):
    source = tmp_path / "hub"
    write_download(source)
    calls = []

    def download(repo_id, filename, *, local_dir, token, force_download, **kwargs):
        calls.append((repo_id, filename, token, force_download))
        local_dir.mkdir(parents=True, exist_ok=True)
        (local_dir / filename).write_bytes((source / filename).read_bytes())

    monkeypatch.setattr(official, "auth_check", lambda *a, **k: None)
    monkeypatch.setattr(official, "hf_hub_download", download)
    folder, what = official.official_weights_folder(REPO)
    assert (folder, what) == (tmp_path / "checkpoints" / "gemma-3-270m", "downloaded")
    assert calls == [(REPO, name, "hf_not_a_real_token", False) for name in official.FILES]


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
