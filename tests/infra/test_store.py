"""The artifact store: the same behaviour from a local folder and from a real S3 server on loopback."""
from __future__ import annotations

import os
import threading

import pytest

from infra import store as store_module
from infra.config import StoreConfig
from infra.store import (
    DIR_MARKER, LocalStore, S3Store, StoreError, StoreKeyNotFound, fetch_source, normalize_key, open_store,
    parse_store_uri,
)
from tests.fixtures.s3 import ControlledEndpoint, fast_retry, make_bucket


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(StoreConfig(root=str(tmp_path / "artifacts")))
    return open_store(request.getfixturevalue("s3_store_config"))


# -- URIs ------------------------------------------------------------------------------------------------

def test_parse_store_uri():
    s3 = parse_store_uri("s3://my-bucket/some/prefix/")
    assert (s3.kind, s3.bucket, s3.prefix) == ("s3", "my-bucket", "some/prefix")
    assert str(s3) == "s3://my-bucket/some/prefix"
    assert parse_store_uri("s3://my-bucket").prefix == ""
    local = parse_store_uri("./artifacts")
    assert local.kind == "local" and local.path.name == "artifacts"
    assert parse_store_uri("file:///tmp/x").path.as_posix() == "/tmp/x"
    with pytest.raises(StoreError, match="3 to 63"):
        parse_store_uri("s3://ab/x")
    with pytest.raises(StoreError, match="unsupported store scheme"):
        parse_store_uri("gs://bucket/x")


def test_open_store_picks_backend(tmp_path, s3_store_config):
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert isinstance(open_store(s3_store_config), S3Store)


@pytest.mark.parametrize("bad", ["/abs/key", "a/../b", "", "runs//x"])
def test_bad_keys_are_rejected(store, bad):
    with pytest.raises(StoreError, match="invalid store key"):
        store.write_bytes(bad, b"x")
    with pytest.raises(StoreError, match="invalid store key"):
        store.list(bad + "/")
    assert store.list() == []  # nothing was written anywhere


@pytest.mark.parametrize("bad", ["./x", "runs//x", "runs/x//", "..", "a/.", "//", "a\\..\\b"])
def test_keys_with_empty_dot_or_dotdot_segments_are_errors_not_normalised(bad):
    with pytest.raises(StoreError, match="empty, '.' or '..' path segment"):
        normalize_key(bad)


def test_a_trailing_slash_names_a_folder(store):
    assert store.uri("runs/r1/") == store.uri("runs/r1")


# -- round trips -----------------------------------------------------------------------------------------

def test_round_trips(store):
    assert store.write_bytes("runs/r1/blob.bin", b"\x00\x01binary") == store.uri("runs/r1/blob.bin")
    assert store.read_bytes("runs/r1/blob.bin") == b"\x00\x01binary"
    store.write_text("runs/r1/notes.md", "héllo ✓")
    assert store.read_text("runs/r1/notes.md") == "héllo ✓"
    store.write_json("runs/r1/manifest.json", {"a": [1, 2], "b": None})
    assert store.read_json("runs/r1/manifest.json") == {"a": [1, 2], "b": None}
    store.write_bytes("runs/r1/blob.bin", b"replaced")
    assert store.read_bytes("runs/r1/blob.bin") == b"replaced"
    assert store.exists("runs/r1/blob.bin") and not store.exists("runs/r1/other.bin")
    assert not store.exists("runs/r1")  # a folder is not an object
    assert store.key_of(store.uri("runs/r1/notes.md")) == "runs/r1/notes.md"


def test_missing_key_is_a_clear_not_found(store):
    with pytest.raises(StoreKeyNotFound, match="missing.json"):
        store.read_bytes("runs/missing.json")
    with pytest.raises(FileNotFoundError):
        store.read_json("runs/missing.json")
    store.delete("runs/missing.json")  # deleting a missing key is fine


def test_invalid_json_names_the_object(store):
    store.write_text("x.json", "{not json")
    with pytest.raises(StoreError, match="x.json is not valid JSON"):
        store.read_json("x.json")


def test_list_is_sorted_and_prefix_based(store):
    for key in ["runs/b/2.txt", "runs/a/1.txt", "runs/a/sub/3.txt", "runs/ab/4.txt", "other/5.txt"]:
        store.write_text(key, key)
    assert store.list("runs/a/") == ["runs/a/1.txt", "runs/a/sub/3.txt"]
    assert store.list("runs/a") == ["runs/a/1.txt", "runs/a/sub/3.txt", "runs/ab/4.txt"]
    assert store.list("") == sorted(["runs/b/2.txt", "runs/a/1.txt", "runs/a/sub/3.txt", "runs/ab/4.txt", "other/5.txt"])
    assert store.list("nothing/") == []
    store.delete("runs/ab/4.txt")
    assert "runs/ab/4.txt" not in store.list("runs/")


def test_files_and_dirs(store, tmp_path):
    source = tmp_path / "model"
    (source / "nested").mkdir(parents=True)
    (source / "config.json").write_text('{"a": 1}')
    (source / "nested" / "weights.bin").write_bytes(os.urandom(70_000))
    keys = store.upload_dir(source, "runs/r1/models/sft")
    assert keys == ["runs/r1/models/sft/config.json", "runs/r1/models/sft/nested/weights.bin"]
    assert store.dir_complete("runs/r1/models/sft")
    assert store.exists(f"runs/r1/models/sft/{DIR_MARKER}")

    target = store.download_dir("runs/r1/models/sft", tmp_path / "copy")
    assert (target / "nested" / "weights.bin").read_bytes() == (source / "nested" / "weights.bin").read_bytes()
    assert not (target / DIR_MARKER).exists()
    assert not [p for p in target.rglob("*") if p.name.startswith(".tmp-")]

    store.upload_file(source / "config.json", "single/config.json")
    local = store.download_file("single/config.json", tmp_path / "out" / "c.json")
    assert local.read_text() == '{"a": 1}'
    with pytest.raises(StoreKeyNotFound):
        store.download_dir("runs/r1/models/none", tmp_path / "none")
    with pytest.raises(StoreKeyNotFound):
        store.download_file("single/missing.json", tmp_path / "missing.json")
    assert not (tmp_path / "missing.json").exists()


def test_download_dir_detects_missing_files(store, tmp_path):
    source = tmp_path / "d"
    source.mkdir()
    (source / "a.txt").write_text("a")
    (source / "b.txt").write_text("b")
    store.upload_dir(source, "dir")
    store.delete("dir/b.txt")
    with pytest.raises(StoreError, match="missing files"):
        store.download_dir("dir", tmp_path / "copy")


def test_fetch_source(tmp_path, s3_store_config):
    local_file = tmp_path / "prompts.jsonl"
    local_file.write_text('{"prompt": "hi"}\n')
    assert fetch_source(str(local_file)) == local_file
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fetch_source(str(tmp_path / "absent.jsonl"))

    s3 = open_store(s3_store_config)
    s3.upload_file(local_file, "inputs/prompts.jsonl")
    fetched = fetch_source(s3.uri("inputs/prompts.jsonl"), s3_store_config, dest_dir=tmp_path / "dl")
    assert fetched.read_text() == local_file.read_text()
    s3.write_text("inputs/folder/part-0.json", "[]")
    folder = fetch_source(s3.uri("inputs/folder"), s3_store_config, dest_dir=tmp_path / "dl2")
    assert (folder / "part-0.json").read_text() == "[]"
    with pytest.raises(StoreKeyNotFound):
        fetch_source(s3.uri("inputs/nothing"), s3_store_config, dest_dir=tmp_path / "dl3")


# -- atomicity -------------------------------------------------------------------------------------------

def test_local_write_publishes_only_complete_files(tmp_path, monkeypatch):
    """The target is never partially written: a failure before the rename leaves the old content, no debris."""
    store = LocalStore(tmp_path)
    store.write_bytes("data.bin", b"old")
    seen_during_write = {}

    def failing_replace(src, dst):
        # At publish time the full new content sits in a temp file in the same folder; the target is untouched.
        seen_during_write["target"] = open(dst, "rb").read()
        seen_during_write["temp"] = open(src, "rb").read()
        seen_during_write["same_dir"] = os.path.dirname(src) == os.path.dirname(dst)
        seen_during_write["listed"] = store.list("")
        raise OSError("simulated crash before publish")

    monkeypatch.setattr(store_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        store.write_bytes("data.bin", b"new content" * 1000)
    assert seen_during_write == {"target": b"old", "temp": b"new content" * 1000, "same_dir": True,
                                 "listed": ["data.bin"]}
    monkeypatch.undo()
    assert store.read_bytes("data.bin") == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_local_upload_and_download_are_atomic(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(100_000))
    monkeypatch.setattr(store_module.os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        store.upload_file(source, "big.bin")
    monkeypatch.undo()
    assert store.list("") == [] and not store.exists("big.bin")
    assert not list((tmp_path / "store").iterdir())  # the temp file was cleaned up


def test_s3_failed_multipart_upload_leaves_no_object(s3_store_config, tmp_path):
    """A big file goes up in parts; when a part fails the object never becomes visible."""
    cfg = s3_store_config.model_copy(update={"multipart_threshold_mb": 5})
    store = open_store(cfg)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(11 * 1024 * 1024))
    parts = []

    def fail_second_part(params, **kwargs):
        parts.append(params["PartNumber"])
        if params["PartNumber"] == 2:
            raise ValueError("simulated failure in the middle of the upload")

    store._client.meta.events.register("before-parameter-build.s3.UploadPart", fail_second_part)
    with pytest.raises(ValueError, match="simulated failure"):
        store.upload_file(source, "models/big.bin")
    assert 2 in parts
    assert not store.exists("models/big.bin")
    assert not store._client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")  # aborted, no debris
    store._client.meta.events.unregister("before-parameter-build.s3.UploadPart", fail_second_part)
    store.upload_file(source, "models/big.bin")  # multipart (2 parts) succeeds as a whole
    assert store.read_bytes("models/big.bin") == source.read_bytes()


# -- an endpoint that is down ------------------------------------------------------------------------------

def test_s3_endpoint_down_then_back_is_retried(s3_server):
    """Connections are refused for two attempts; the endpoint then comes back and the call succeeds."""
    bucket = make_bucket(s3_server)
    with ControlledEndpoint(s3_server) as endpoint:
        attempts = []

        def on_retry(attempt, error, delay):
            attempts.append(type(error).__name__)
            if attempt == 2:
                endpoint.open()  # the outage ends after the second failed attempt

        store = open_store(StoreConfig(root=f"s3://{bucket}/p", endpoint_url=endpoint.url, retry=fast_retry(5)),
                           on_retry=on_retry)
        store.write_text("runs/r/x.txt", "survived")
        assert attempts == ["EndpointConnectionError", "EndpointConnectionError"]
        assert store.retries == 2
        assert store.read_text("runs/r/x.txt") == "survived"


@pytest.mark.timeout(60)
def test_s3_endpoint_down_for_good_raises_store_error(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sk-distinctive-secret-value")
    bucket = make_bucket(s3_server)
    with ControlledEndpoint(s3_server) as endpoint:  # never opened: every connection is refused
        calls = []
        store = open_store(StoreConfig(root=f"s3://{bucket}/p", endpoint_url=endpoint.url, retry=fast_retry(3)),
                           on_retry=lambda attempt, error, delay: calls.append(attempt))
        with pytest.raises(StoreError) as caught:
            store.read_bytes("runs/r/x.txt")
    message = str(caught.value)
    assert endpoint.url in message and bucket in message and "after 3 attempts" in message
    assert "sk-distinctive-secret-value" not in message  # credentials never appear
    assert calls == [1, 2]


def test_s3_missing_bucket_is_named(s3_server):
    store = open_store(StoreConfig(root="s3://no-such-bucket-here/p", endpoint_url=s3_server, retry=fast_retry()))
    with pytest.raises(StoreError, match="no-such-bucket-here.*does not exist; create it"):
        store.write_text("a.txt", "x")
    with pytest.raises(StoreError, match=f"upload 'b.txt' on bucket 'no-such-bucket-here' at {s3_server}.*NoSuchBucket"):
        store.upload_file(__file__, "b.txt")


def test_s3_concurrent_readers_see_whole_objects(s3_store_config):
    """Readers racing a writer only ever see one complete version or the other."""
    store = open_store(s3_store_config)
    versions = [bytes([i]) * 300_000 for i in range(1, 6)]
    store.write_bytes("race.bin", versions[0])
    seen = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(store.read_bytes("race.bin"))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in versions[1:]:
            store.write_bytes("race.bin", version)
    finally:
        stop.set()
        thread.join()
    assert seen <= set(versions) and seen
