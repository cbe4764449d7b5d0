import pyarrow.fs as pafs
import pytest

from rayops.config import StorageConfig
from rayops.errors import StorageError
from rayops.storage import ensure_bucket, resolve, resolve_under, root_of


def test_local_location_round_trip(tmp_path):
    root = resolve(str(tmp_path / "lake"))
    ensure_bucket(root)
    target = root.join("a", "/b/", "c.json")
    target.write_json({"x": 1})
    assert target.read_json() == {"x": 1}
    assert root.join("a").list_dir() == ["b"]
    assert [i.path for i in root.list_files()] == [target.path]
    assert root.join("missing").list_files() == []


def test_file_uri_and_relative_paths(tmp_path, monkeypatch):
    assert resolve(f"file://{tmp_path}").path == str(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert resolve("lake").path == str(tmp_path / "lake")


def test_s3_uri_uses_endpoint_without_connecting():
    loc = resolve("s3://bucket/prefix/", endpoint_url="http://127.0.0.1:9")
    assert isinstance(loc.fs, pafs.S3FileSystem)
    assert loc.path == "bucket/prefix" and loc.uri == "s3://bucket/prefix"
    assert loc.join("raw").uri == "s3://bucket/prefix/raw"


def test_resolve_under_keeps_full_uris(tmp_path):
    storage = StorageConfig(root=str(tmp_path))
    root = root_of(storage)
    assert resolve_under(root, "raw/x", storage).path == str(tmp_path / "raw" / "x")
    assert resolve_under(root, "/abs/path", storage).path == "/abs/path"


def test_credentials_from_config_are_used_but_never_shown():
    storage = StorageConfig(
        root="s3://b/p",
        endpoint_url="http://127.0.0.1:9",
        access_key_id="AKIDSECRET",
        secret_access_key="VERYSECRET",
    )
    assert isinstance(root_of(storage).fs, pafs.S3FileSystem)
    shown = repr(storage) + storage.model_dump_json()
    assert "VERYSECRET" not in shown and "AKIDSECRET" not in shown


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("gs://bucket/x", "scheme 'gs' is not supported"),
        ("s3://", "names no bucket"),
    ],
)
def test_unsupported_or_empty_uris(uri, message):
    with pytest.raises(StorageError, match=message):
        resolve(uri)


def test_missing_file_read_names_it(tmp_path):
    with pytest.raises(StorageError, match="missing.json does not exist"):
        resolve(str(tmp_path)).join("missing.json").read_bytes()
