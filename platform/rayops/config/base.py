"""Shared pieces of the config sections, and the storage section."""

from __future__ import annotations

import re
from contextvars import ContextVar
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_URI_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class _Section(BaseModel):
    # validate_default: a default goes through the same validators as a value written in
    # the file (relative paths resolved, URIs checked), so a config that leaves a section
    # out behaves exactly like one that spells the defaults.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def is_uri(value: str) -> bool:
    """True for ``scheme://...`` strings (s3://, file://, http://)."""
    return bool(_URI_SCHEME_RE.match(value))


# What relative local paths resolve against while a config loads: the working directory,
# unless a job names the folder it was submitted from (``--base-dir``).
BASE_DIR: ContextVar[Path | None] = ContextVar("rayops_config_base_dir", default=None)


def _absolute_local(value: str) -> str:
    """Resolve a local relative path against the base directory at load time."""
    if is_uri(value):
        return value
    path, base = Path(value).expanduser(), BASE_DIR.get()
    if base is not None and not path.is_absolute():
        path = base / path
    return str(path.resolve())


class StorageConfig(_Section):
    root: str = Field(
        "./lake",
        description="Root of the object store: s3://bucket/prefix, file:///abs/path, or a local "
        "folder (relative paths resolve against the working directory). Raw data, curated "
        "datasets and checkpoints all live under it.",
    )
    endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint (MinIO, moto, ...) such as http://127.0.0.1:9000. "
        "Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never from this file.",
    )
    region: str | None = Field(None, description="S3 region; the endpoint's default when unset.")
    access_key_id: SecretStr | None = Field(
        None,
        description="S3 access key. Prefer AWS_ACCESS_KEY_ID in the environment; a value "
        "here is never printed, logged or sent to MLflow.",
    )
    secret_access_key: SecretStr | None = Field(None, description="S3 secret key (see above).")
    session_token: SecretStr | None = Field(None, description="S3 session token (see above).")

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        if v.startswith("s3://") and not v[len("s3://") :].strip("/"):
            raise ValueError("an s3:// root needs a bucket, for example s3://my-bucket/rayops")
        return _absolute_local(v)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/]+", v):
            raise ValueError("must start with http:// or https:// and name a host")
        return v
