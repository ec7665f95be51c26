"""Publishing to the Hugging Face Hub (or a Hub-compatible server): the promoted model and the night's datasets.

Pure huggingface_hub calls (no Prefect). The token comes from the environment variable the config names
(`pipeline.publish.token_env`, HF_TOKEN by default), never from the config itself; the server is `HF_ENDPOINT`
when set (a private Hub mirror), read when the push starts. Every error message that leaves this module has the
token masked.

One push = create the repository if needed (private unless configured otherwise), then one commit holding every
file of a local folder (huggingface_hub picks regular or LFS/Xet uploads per file, as the server says).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from toa_core.credentials import redact_text
from toa_core.config import Section

HUB_ENDPOINT_ENV = "HF_ENDPOINT"
DEFAULT_ENDPOINT = "https://huggingface.co"
_REPO_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$"


class PublishConfig(Section):
    """`pipeline.publish`: push the promoted model and the night's datasets to Hub repos (opt-in)."""
    enabled: bool = False
    model_repo: str | None = Field(None, pattern=_REPO_ID, description="owner/name: the promoted model as trained "
                                   "(LoRA adapter or full weights) with its model card")
    merged_repo: str | None = Field(None, pattern=_REPO_ID, description="owner/name: a LoRA model merged into its "
                                    "base weights (what `vllm serve` or `transformers serve` load), with a model card")
    dataset_repo: str | None = Field(None, pattern=_REPO_ID, description="owner/name: the promoted run's datasets "
                                     "(sft, dpo) with the dataset card")
    token_env: str = Field("HF_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                           description="environment variable holding the Hub token (write access); never the token")
    private: bool = Field(True, description="create missing repositories as private")

    @model_validator(mode="after")
    def _somewhere_to_push(self) -> "PublishConfig":
        if self.enabled and not (self.model_repo or self.merged_repo or self.dataset_repo):
            raise ValueError("publish.enabled needs at least one of model_repo, merged_repo, dataset_repo")
        return self


class PublishError(RuntimeError):
    """A push failed; the message names the repository and the cause, with the token masked."""


@dataclass(frozen=True)
class Pushed:
    """One pushed folder: where it went and the commit the server answered with."""
    repo_id: str
    repo_type: Literal["model", "dataset"]
    files: int
    commit_url: str


def hub_endpoint() -> str:
    """The Hub server: $HF_ENDPOINT when set (a mirror, a private Hub), else huggingface.co."""
    return (os.environ.get(HUB_ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")


def hub_token(token_env: str) -> str:
    token = os.environ.get(token_env)
    if not token:
        raise PublishError(f"the Hub token variable ${token_env} (pipeline.publish.token_env) is not set on this "
                           "worker; export it in the worker's environment")
    return token


def push_folder(folder: Path, repo_id: str, repo_type: Literal["model", "dataset"], token: str, *, private: bool,
                message: str) -> Pushed:
    """Create `repo_id` if needed and commit every file under `folder` to it (one commit)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    files = sorted(path for path in folder.rglob("*") if path.is_file())
    if not files:
        raise PublishError(f"{repo_type} {repo_id}: nothing to push, {folder} is empty")
    api = HfApi(endpoint=hub_endpoint(), token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        commit = api.create_commit(
            repo_id, repo_type=repo_type, commit_message=message,
            operations=[CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
                        for path in files])
    except Exception as error:  # noqa: BLE001 - any client or server error: reported, token masked
        cause = redact_text(f"{type(error).__name__}: {error}", {token})
        raise PublishError(f"pushing to {repo_type} {repo_id} at {hub_endpoint()} failed: {cause}") from None
    return Pushed(repo_id, repo_type, len(files), str(commit.commit_url))
