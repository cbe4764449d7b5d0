"""Resolve storage URIs to pyarrow filesystems, so a local folder is used exactly like a bucket.

``s3://bucket/prefix`` (optionally with an endpoint URL for MinIO/moto), ``file:///abs/path``
and plain local paths all become a :class:`Location`: a filesystem plus a path inside it.
Every stage reads and writes through a Location, never through ``open()`` or boto3 directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from rayops.errors import StorageError, one_line

if TYPE_CHECKING:
    from rayops.config import StorageConfig


@dataclass(frozen=True)
class Location:
    """A path inside a filesystem; ``uri`` is how it is shown to users, ``endpoint`` the
    S3 endpoint it lives on (None: AWS or a local folder)."""

    fs: pafs.FileSystem
    path: str
    uri: str
    endpoint: str | None = None
    # How delta-rs (Rust, its own S3 client) reaches the same place: never shown.
    options: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def table_uri(self) -> str:
        """This location as delta-rs addresses it (with :attr:`options`)."""
        return self.path if self.is_local else "s3://" + self.path

    def child(self, path: str) -> Location:
        """A location of this filesystem from a full path or URI delta-rs reports."""
        for prefix in ("s3://", "file://"):
            path = path.removeprefix(prefix)
        return Location(
            self.fs,
            path,
            ("s3://" + path) if not self.is_local else path,
            self.endpoint,
            self.options,
        )

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> Location:
        clean = [p.strip("/") for p in parts if p and p.strip("/")]
        return Location(
            self.fs,
            posixpath.join(self.path, *clean) if clean else self.path,
            "/".join([self.uri.rstrip("/"), *clean]) if clean else self.uri,
            self.endpoint,
            self.options,
        )

    def parent(self) -> Location:
        return Location(
            self.fs,
            posixpath.dirname(self.path),
            self.uri.rsplit("/", 1)[0],
            self.endpoint,
            self.options,
        )

    @contextlib.contextmanager
    def io(self, operation: str) -> Iterator[None]:
        """Turn a storage failure (after pyarrow's retries) into a StorageError naming the
        operation, the location and the endpoint. A missing file stays FileNotFoundError."""
        try:
            yield
        except FileNotFoundError:
            raise
        except OSError as exc:
            where = f" on endpoint {self.endpoint}" if self.endpoint else ""
            raise StorageError(f"cannot {operation} {self.uri}{where}: {one_line(exc)}") from None

    def exists(self) -> bool:
        with self.io("look up"):
            return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        with self.io("look up"):
            return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def list_dir(self) -> list[str]:
        """Names directly under this location (empty when it does not exist)."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        try:
            with self.io("list"):
                infos = self.fs.get_file_info(selector)
        except FileNotFoundError:  # created by another process while this one listed it
            return []
        return sorted(posixpath.basename(info.path) for info in infos)

    def list_files(self) -> list[pafs.FileInfo]:
        """Every file below this location, recursively, sorted by path."""
        with self.io("list"):
            info = self.fs.get_file_info(self.path)
            if info.type == pafs.FileType.File:
                return [info]
            selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=True)
            found = self.fs.get_file_info(selector)
        files = [i for i in found if i.type == pafs.FileType.File]
        return sorted(files, key=lambda i: i.path)

    def makedirs(self) -> None:
        """Create the folder; object stores need none (and would get marker objects)."""
        if self.is_local:
            with self.io("create"):
                self.fs.create_dir(self.path, recursive=True)

    def read_bytes(self) -> bytes:
        try:
            with self.io("read"), self.fs.open_input_stream(self.path, compression=None) as f:
                return f.read()
        except FileNotFoundError:
            raise StorageError(f"{self.uri} does not exist") from None

    def write_bytes(self, data: bytes) -> None:
        self.parent().makedirs()
        # compression=None: bytes are stored as given, even for names ending in .gz
        with self.io("write"), self.fs.open_output_stream(self.path, compression=None) as f:
            f.write(data)

    def read_json(self) -> Any:
        return json.loads(self.read_bytes())

    def put_if_absent(self, data: bytes) -> bool:
        """Write ``data`` here only if nothing is here yet, atomically: True if this call
        wrote it, False if something already was (another writer won). The primitive Delta
        commits use: a hard link of a complete temporary file locally (never a partial
        file), a conditional PUT (``If-None-Match: *``) on S3."""
        if self.is_local:
            return _link_if_absent(self, data)
        bucket, _, key = self.path.partition("/")
        try:
            _s3_client(self.options).put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except Exception as exc:
            status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            # 412: the object exists; 409: another conditional write of it is in flight
            if status in (409, 412):
                return False
            where = f" on endpoint {self.endpoint}" if self.endpoint else ""
            raise StorageError(f"cannot write {self.uri}{where}: {one_line(exc)}") from None
        return True

    def write_json(self, value: Any) -> None:
        self.write_bytes(json.dumps(value, indent=2, sort_keys=True).encode())

    def delete(self) -> None:
        """Remove this file (gone already is fine)."""
        with contextlib.suppress(FileNotFoundError), self.io("delete"):
            self.fs.delete_file(self.path)

    def delete_dir(self) -> None:
        if self.exists():
            with self.io("delete"):
                self.fs.delete_dir(self.path)

    def download_dir(self, dest: Path) -> Path:
        """Copy everything under this location into a local folder."""
        dest.mkdir(parents=True, exist_ok=True)
        with self.io("download"):
            pafs.copy_files(
                self.path,
                str(dest),
                source_filesystem=self.fs,
                destination_filesystem=pafs.LocalFileSystem(),
            )
        return dest

    def upload_dir(self, src: Path) -> None:
        """Copy a local folder's contents to this location."""
        self.makedirs()
        with self.io("upload to"):
            pafs.copy_files(
                str(src),
                self.path,
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=self.fs,
            )


def _link_if_absent(location: Location, data: bytes) -> bool:
    location.parent().makedirs()
    staged = f"{location.path}.{uuid.uuid4().hex}.tmp"
    try:
        with location.io("write"):
            Path(staged).write_bytes(data)
            try:
                os.link(staged, location.path)  # atomic; fails if the name exists
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(staged)
    return True


def _s3_client(options: dict[str, str]) -> Any:
    """boto3's S3 client for the place :func:`delta_options` describes (pyarrow's client
    has no conditional writes)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=options.get("AWS_ENDPOINT_URL"),
        region_name=options.get("AWS_REGION"),
        aws_access_key_id=options.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=options.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=options.get("AWS_SESSION_TOKEN"),
        config=Config(
            retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
            connect_timeout=S3_CONNECT_TIMEOUT_S,
            read_timeout=S3_REQUEST_TIMEOUT_S,
            s3={"addressing_style": "path"} if "AWS_ENDPOINT_URL" in options else None,
        ),
    )


# Transient S3 errors (throttling, resets, 5xx, a restarting endpoint) are retried with
# exponential backoff by the AWS SDK inside pyarrow. Measured against a closed port: 5
# attempts span about 9 s before an operation fails for good, 8 attempts 59 s.
S3_MAX_ATTEMPTS = 5
S3_CONNECT_TIMEOUT_S = 5.0
S3_REQUEST_TIMEOUT_S = 60.0


def s3_filesystem(
    endpoint_url: str | None = None,
    region: str | None = None,
    credentials: dict[str, str] | None = None,
) -> pafs.S3FileSystem:
    """pyarrow's S3 client; credentials from ``credentials`` or else the environment."""
    # ensure_bucket creates a missing bucket (never deletes one).
    kwargs: dict[str, Any] = {
        **(credentials or {}),
        "allow_bucket_creation": True,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS),
        "connect_timeout": S3_CONNECT_TIMEOUT_S,
        "request_timeout": S3_REQUEST_TIMEOUT_S,
    }
    if endpoint_url:
        parsed = urlparse(endpoint_url)
        kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        kwargs["scheme"] = parsed.scheme
        # Path-style addressing lets a bucket on a bare host:port endpoint resolve.
        kwargs["force_virtual_addressing"] = False
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    elif endpoint_url:
        kwargs["region"] = "us-east-1"
    return pafs.S3FileSystem(**kwargs)


def delta_options(
    endpoint_url: str | None = None,
    region: str | None = None,
    credentials: dict[str, str] | None = None,
) -> dict[str, str]:
    """delta-rs storage options for the same S3 place :func:`s3_filesystem` reaches.
    Commits use S3's conditional writes (no lock service)."""
    names = {
        "access_key": "AWS_ACCESS_KEY_ID",
        "secret_key": "AWS_SECRET_ACCESS_KEY",
        "session_token": "AWS_SESSION_TOKEN",
    }
    options = {names[k]: v for k, v in (credentials or {}).items() if k in names}
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint_url:
        options["AWS_ENDPOINT_URL"] = endpoint_url.rstrip("/")
        options["AWS_ALLOW_HTTP"] = "true" if endpoint_url.startswith("http://") else "false"
        options["AWS_FORCE_PATH_STYLE"] = "true"
        region = region or "us-east-1"
    if region:
        options["AWS_REGION"] = region
    return options


def resolve(
    uri: str,
    endpoint_url: str | None = None,
    region: str | None = None,
    credentials: dict[str, str] | None = None,
) -> Location:
    """Turn a URI or local path into a :class:`Location`."""
    if uri.startswith("s3://"):
        path = uri[len("s3://") :].strip("/")
        if not path:
            raise StorageError(f"storage URI {uri!r} names no bucket")
        return Location(
            s3_filesystem(endpoint_url, region, credentials),
            path,
            "s3://" + path,
            endpoint_url,
            delta_options(endpoint_url, region, credentials),
        )
    if uri.startswith("file://"):
        local = urlparse(uri).path
        return Location(pafs.LocalFileSystem(), local, "file://" + local)
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise StorageError(
            f"storage URI {uri!r}: scheme {scheme!r} is not supported; use s3://, "
            "file:// or a local path"
        )
    local = str(Path(uri).expanduser().resolve())
    return Location(pafs.LocalFileSystem(), local, local)


def resolve_under(root: Location, path_or_uri: str, storage: StorageConfig) -> Location:
    """A full URI or absolute path as given (same endpoint and credentials as the root);
    anything else relative to ``root``."""
    if "://" in path_or_uri or path_or_uri.startswith("/"):
        return resolve(path_or_uri, storage.endpoint_url, storage.region, _credentials(storage))
    return root.join(path_or_uri)


def ensure_bucket(location: Location) -> None:
    """Create the bucket (S3) or folder (local) at the root of ``location`` if missing."""
    if location.is_local:
        location.makedirs()
        return
    bucket = location.path.split("/", 1)[0]
    with location.io("create the bucket of"):
        if location.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            location.fs.create_dir(bucket)


def _credentials(storage: StorageConfig) -> dict[str, str]:
    names = {
        "access_key_id": "access_key",
        "secret_access_key": "secret_key",
        "session_token": "session_token",
    }
    return {
        arg: secret.get_secret_value()
        for field, arg in names.items()
        if (secret := getattr(storage, field)) is not None
    }


def root_of(storage: StorageConfig) -> Location:
    """The storage root a pipeline config names."""
    return resolve(storage.root, storage.endpoint_url, storage.region, _credentials(storage))
