"""What preparing weights did, and what went wrong, as values: the code branches on these, messages are
built from them.

- `Preparation`: the folder and what was done to it (`Action`), with why when it was rebuilt
  (`FolderProblem`) and which damaged files were downloaded again.
- `WeightsError`: the one error type of this package. `kind` (a `Failure`) says what went wrong,
  `problem` is one sentence stating it, `fix` what to do; the message is the two together.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path


class Action(enum.Enum):
    """What preparing a folder did."""

    REUSED = "reused the converted folder"
    CONVERTED = "converted the GGUF"
    REBUILT = "rebuilt the converted folder"
    ALREADY_DOWNLOADED = "already downloaded"
    DOWNLOADED = "downloaded"


class FolderProblem(enum.Enum):
    """Why a converted folder is not reused as it is."""

    NO_MANIFEST = "no manifest"
    UNREADABLE_MANIFEST = "unreadable manifest"
    FILES_NOT_LISTED = "its manifest does not list every file"
    SOURCE_CHANGED = "its source changed (another GGUF or converter version)"
    FILE_MISSING = "a file is missing"
    FILE_CHANGED = "a file does not match its manifest"


@dataclass(frozen=True)
class Problem:
    """A `FolderProblem` with the file it concerns (when one) and a detail (e.g. the exception's type)."""

    kind: FolderProblem
    file: str | None = None
    detail: str | None = None

    def __str__(self) -> str:
        if self.kind is FolderProblem.FILE_MISSING:
            return f"{self.file} is missing"
        if self.kind is FolderProblem.FILE_CHANGED:
            return f"{self.file} does not match its manifest"
        if self.kind is FolderProblem.FILES_NOT_LISTED:
            return f"its manifest does not list {self.file}"
        return self.kind.value + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Preparation:
    """A prepared folder (model.safetensors and tokenizer.json) and what preparing it did."""

    folder: Path
    action: Action
    problem: Problem | None = None  # why it was rebuilt (Action.REBUILT)
    seconds: float | None = None  # how long converting took
    replaced: tuple[str, ...] = ()  # damaged files downloaded again (Action.DOWNLOADED)

    def describe(self) -> str:
        """A few words for the reader: what was done, never a machine path."""
        what = self.action.value
        if self.action is Action.REBUILT and self.problem is not None:
            if self.problem.kind is FolderProblem.SOURCE_CHANGED:
                what += f" because {self.problem}"
            else:
                what = f"rebuilt a damaged converted folder ({self.problem})"
        if self.replaced:
            what += f", replacing damaged {' and '.join(self.replaced)}"
        if self.seconds is not None:
            what += f" in {self.seconds:.0f} s"
        return what


class Failure(enum.Enum):
    """What went wrong: the kind of a `WeightsError`."""

    UNKNOWN_SOURCE = "unknown weights source"
    PACKAGE_MISSING = "a needed package is not installed"
    GGUF_ASSEMBLY_FAILED = "the GGUF could not be assembled"
    GGUF_UNREADABLE = "not a readable GGUF file"
    NOT_GEMMA3 = "not a Gemma 3 GGUF"
    UNKNOWN_TENSOR = "a GGUF tensor without a Hugging Face name"
    DEQUANTIZE_FAILED = "a GGUF tensor could not be dequantized"
    NO_TOKENIZER = "the GGUF has no tokenizer"
    TOKENIZER_INCONSISTENT = "the GGUF's tokenizer is inconsistent"
    CHECKPOINTS_NOT_WRITABLE = "the checkpoints folder cannot be written"
    LOCK_TIMEOUT = "another process holds the preparation lock"
    # The official weights (raised as OfficialWeightsUnavailable):
    TOKEN_UNREADABLE = "the Hugging Face token could not be read"
    NO_TOKEN = "no Hugging Face token"
    OFFLINE_MODE = "Hugging Face offline mode"
    LICENSE_NOT_ACCEPTED = "the license has not been accepted"
    REPO_NOT_FOUND = "repository not found"
    TOKEN_REJECTED = "token rejected"
    TOKEN_FORBIDDEN = "token may not read the repository"
    HUB_ERROR = "the hub answered with an error"
    HUB_TIMEOUT = "the hub did not answer in time"
    HUB_UNREACHABLE = "the hub could not be reached"
    CACHE_NOT_WRITABLE = "the Hugging Face cache cannot be written"
    DOWNLOAD_UNUSABLE = "a downloaded file is not usable"


class WeightsError(RuntimeError):
    """Weights or tokenizer could not be prepared: `kind` says what went wrong, `problem` states it in one
    sentence, `fix` says what to do; str() is the two together."""

    def __init__(self, kind: Failure, problem: str, fix: str = ""):
        self.kind, self.problem, self.fix = kind, problem, fix
        super().__init__(" ".join(part for part in (problem, fix) if part))


@dataclass(frozen=True)
class DamagedFile:
    """A cached official file that failed its check: its name, its path and what is wrong with it."""

    name: str
    path: str
    problem: str


class OfficialWeightsUnavailable(WeightsError):
    """The official Hugging Face weights cannot be had (no token, license, network, ...).

    `damaged` lists cached files found damaged on the way, each named in the message with its fix.
    """

    OFFLINE_HINT = 'Or use source="offline": the offline default needs no account.'

    def __init__(self, kind: Failure, problem: str, fix: str = "", repo_id: str = "",
                 damaged: tuple[DamagedFile, ...] = ()):
        self.repo_id, self.damaged = repo_id, damaged
        notes = [f"The cached copy of {d.name} of {repo_id} is damaged ({d.problem}): delete {d.path}, or run "
                 "again where the hub can be reached to download it again." for d in damaged]
        super().__init__(kind, problem, " ".join([*notes, fix, self.OFFLINE_HINT]).strip())
