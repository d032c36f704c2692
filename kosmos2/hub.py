"""Resolve a checkpoint given as a local folder or a Hugging Face hub id."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import UserError

MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "adapter_config.json",
)
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "preprocessor_config.json",
    "processor_config.json",
)


DOWNLOAD_BAR = "huggingface_hub.snapshot_download"  # the name of snapshot_download's bar of bytes written

ByteProgress = Callable[[int, int], None]  # (bytes just written, bytes in all so far known; 0: not yet)


class CheckpointError(UserError, OSError):
    """A checkpoint folder or hub repository is missing, unreachable or incomplete."""


class HubUnreachable(CheckpointError):
    """The hub cannot be reached (offline, or ``HF_HUB_OFFLINE=1``) and the local cache has no complete copy."""


def _bar_reporting(on_bytes: ByteProgress) -> type:
    """A huggingface_hub progress bar class that also gives ``on_bytes`` each update of the download's
    byte count (it is called even where the bar itself is hidden: no terminal, as on Spaces)."""
    from huggingface_hub.utils import tqdm

    class Bar(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            self._reports = kwargs.get("name") == DOWNLOAD_BAR
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if self._reports:
                on_bytes(int(n or 0), int(self.total or 0))
            return super().update(n)

    return Bar


def resolve_checkpoint(
    path_or_repo_id: str | Path,
    allow_patterns: Sequence[str],
    revision: str | None = None,
    local_files_only: bool | None = None,
    on_bytes: ByteProgress | None = None,
) -> Path:
    """Return a local folder holding the checkpoint.

    A path to an existing folder is used as it is. Anything else is taken as a hub repository
    id and downloaded with ``huggingface_hub`` (only the files matching ``allow_patterns``;
    never pickle files); ``on_bytes(n, total)`` hears of every ``n`` bytes written, ``total`` being
    the size of the files to download. Errors say what is missing and whether the hub could be reached.
    """
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    repo_id = str(path_or_repo_id)
    if path.is_absolute() or repo_id.startswith((".", "~")) or repo_id.count("/") > 1:
        raise CheckpointError(f"Checkpoint folder not found: {repo_id}")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=list(allow_patterns),
                local_files_only=bool(local_files_only),
                tqdm_class=None if on_bytes is None else _bar_reporting(on_bytes),
            )
        )
    # One line each: huggingface_hub's own messages are paragraphs (they stay in the exception chain).
    except HFValidationError as e:
        raise CheckpointError(f"Checkpoint not found: '{repo_id}' is neither a folder nor a hub id") from e
    except LocalEntryNotFoundError as e:
        raise HubUnreachable(
            f"Could not get '{repo_id}': the Hugging Face hub is unreachable (offline, or "
            "HF_HUB_OFFLINE=1) and the local cache has no complete copy"
        ) from e
    except GatedRepoError as e:  # before its base class, RepositoryNotFoundError
        raise CheckpointError(
            f"Could not get '{repo_id}': the model is gated on the Hugging Face hub "
            "(accept its terms on its page, then log in with `hf auth login`)"
        ) from e
    except RepositoryNotFoundError as e:
        raise CheckpointError(
            f"Could not get '{repo_id}': no such folder, and no such model on the Hugging Face "
            "hub (or it is private: log in with `hf auth login`)"
        ) from e
    except RevisionNotFoundError as e:
        raise CheckpointError(f"Could not get '{repo_id}': the Hugging Face hub has no revision {revision!r}") from e


def require_files(folder: Path, names: Sequence[str], what: str) -> None:
    """Raise ``CheckpointError`` naming every file of ``names`` that ``folder`` lacks."""
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"{what} in '{folder}' is incomplete: missing {', '.join(missing)}")
