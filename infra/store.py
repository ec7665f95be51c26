"""The artifact store: one API over a local folder and an S3 bucket (AWS or any S3-compatible service).

Keys are '/'-joined paths relative to the store root, e.g. "runs/<run_id>/datasets/sft/train.parquet".
Every write is atomic: a reader sees the old object, or no object, or the whole new object, never a part.
- LocalStore writes to a temporary file in the destination folder, then `os.replace`s it into place.
- S3Store relies on S3 itself: PutObject and multipart uploads only become visible once complete.
S3 calls that fail on the way (connection refused, endpoint unreachable, throttling, 5xx) are retried with
exponential backoff and full jitter (`StoreConfig.retry`), then reported as a StoreError naming the endpoint
and the bucket. Credentials come only from boto3's own chain (environment, profile, instance role); they are
never part of a config, a message or a log line.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from infra.config import StoreConfig
from toa_core.config import RetryConfig
from toa_core.credentials import mask_url_credentials

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Written last by `upload_dir`; its presence means every file of the folder is published.
DIR_MARKER = "_COMPLETE.json"
_TMP_PREFIX = ".tmp-"  # local temporary files; never listed
_MB = 1024 * 1024


class StoreError(RuntimeError):
    """The store could not do what was asked; the message names the store (endpoint, bucket) and the key."""


class StoreKeyNotFound(StoreError, FileNotFoundError):
    """The key does not exist in the store (also a FileNotFoundError, so `except FileNotFoundError` works)."""


# ----------------------------------------------------------------------------------------------------------
# URIs and keys


@dataclass(frozen=True)
class StoreLocation:
    """A parsed store root or object URI: `kind` "s3" with bucket and prefix, or "local" with a path."""
    kind: str  # "s3" | "local"
    bucket: str | None = None
    prefix: str = ""  # s3 only: the key prefix inside the bucket, without leading or trailing '/'
    path: Path | None = None  # local only

    def __str__(self) -> str:
        if self.kind == "s3":
            return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return str(self.path)


def parse_store_uri(uri: str) -> StoreLocation:
    """Parse "s3://bucket/prefix", "file:///abs/path" or a plain path into a StoreLocation.

    Raises StoreError for other schemes and for bucket names S3 would reject (3-63 characters).
    """
    uri = str(uri).strip()
    if not uri:
        raise StoreError("empty store URI; use a folder such as ./artifacts or s3://bucket/prefix")
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        if not 3 <= len(bucket) <= 63:
            raise StoreError(f"'{uri}': S3 bucket names have 3 to 63 characters, got '{bucket}'")
        return StoreLocation(kind="s3", bucket=bucket, prefix=prefix.strip("/"))
    if uri.startswith("file://"):
        return StoreLocation(kind="local", path=Path(uri[len("file://"):]))
    scheme, sep, _ = uri.partition("://")
    if sep and scheme.isalnum():
        raise StoreError(f"'{uri}': unsupported store scheme '{scheme}://'; use a local folder or s3://bucket/prefix")
    return StoreLocation(kind="local", path=Path(uri).expanduser())


def normalize_key(key: str) -> str:
    """Check a store key: relative, '/'-separated, no empty, '.' or '..' segment (an error, never tidied up:
    `runs//x` most likely lost a run id on the way). One trailing '/' (a folder) is dropped."""
    raw = str(key).replace("\\", "/")
    parts = raw.removesuffix("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise StoreError(f"invalid store key '{key}': empty, '.' or '..' path segment; use a relative path like "
                         "'runs/<run_id>/manifest.json'")
    return "/".join(parts)


def _normalize_prefix(prefix: str) -> str:
    """Prefixes may be empty (the whole store) and keep a trailing '/' when given (folder semantics)."""
    if not prefix:
        return ""
    trailing = prefix.endswith("/")
    key = normalize_key(prefix)
    return key + "/" if trailing else key


def _join(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/{name}" if prefix else name


# ----------------------------------------------------------------------------------------------------------
# The interface


class Store(ABC):
    """An artifact store. Subclasses implement the byte-level primitives; text/json/dirs are built on them."""

    # -- primitives -------------------------------------------------------------------------------------
    @abstractmethod
    def uri(self, key: str) -> str:
        """The full URI (s3://...) or absolute local path of `key`."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True when an object (not a folder) is stored under `key`."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with `prefix` (string prefix, as S3 does; end it with '/' for a folder)."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; StoreKeyNotFound when it does not exist."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> str:
        """Store `data` atomically under `key`; returns its URI."""

    @abstractmethod
    def upload_file(self, local: str | os.PathLike, key: str) -> str:
        """Copy a local file into the store atomically; returns its URI."""

    @abstractmethod
    def download_file(self, key: str, local: str | os.PathLike) -> Path:
        """Copy an object to a local file (written to a temporary file, then renamed); returns the path."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""

    # -- built on the primitives ------------------------------------------------------------------------
    def key_of(self, uri: str) -> str:
        """The key of a URI this store produced (inverse of `uri`); StoreError if it lies elsewhere."""
        root = self.uri("x")[:-1]
        if not str(uri).startswith(root):
            raise StoreError(f"'{uri}' is not inside the store {root}")
        return normalize_key(str(uri)[len(root):])

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> str:
        return self.write_bytes(key, text.encode("utf-8"))

    def read_json(self, key: str) -> Any:
        try:
            return json.loads(self.read_bytes(key))
        except json.JSONDecodeError as error:
            raise StoreError(f"{self.uri(key)} is not valid JSON (line {error.lineno}): {error.msg}") from None

    def write_json(self, key: str, obj: Any) -> str:
        return self.write_text(key, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False, default=str) + "\n")

    def upload_dir(self, local_dir: str | os.PathLike, prefix: str) -> list[str]:
        """Upload every file under `local_dir` to `prefix/<relative path>`, then write `prefix/_COMPLETE.json`.

        Each file is atomic on its own; the marker, written last, lists the files and tells a reader the whole
        folder is there (`dir_complete`). Returns the uploaded keys (marker excluded).
        """
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise StoreError(f"upload_dir: '{local_dir}' is not a folder")
        prefix = normalize_key(prefix)
        marker = _join(prefix, DIR_MARKER)
        self.delete(marker)  # a re-upload is incomplete until its own marker lands
        keys = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            relative = path.relative_to(local_dir).as_posix()
            if relative == DIR_MARKER:
                continue
            key = _join(prefix, relative)
            self.upload_file(path, key)
            keys.append(key)
        files = {k[len(prefix) + 1:]: (local_dir / k[len(prefix) + 1:]).stat().st_size for k in keys}
        self.write_json(marker, {"files": files})
        return keys

    def dir_complete(self, prefix: str) -> bool:
        """True when `upload_dir` finished publishing `prefix` (its marker exists)."""
        return self.exists(_join(normalize_key(prefix), DIR_MARKER))

    def download_dir(self, prefix: str, local_dir: str | os.PathLike) -> Path:
        """Download every object under `prefix/` into `local_dir`, keeping relative paths; returns the folder.

        When the folder was published by `upload_dir`, checks that every listed file arrived.
        """
        prefix = normalize_key(prefix)
        local_dir = Path(local_dir)
        keys = self.list(prefix + "/")
        if not keys:
            raise StoreKeyNotFound(f"{self.uri(prefix)}/ holds no objects")
        marker = _join(prefix, DIR_MARKER)
        for key in keys:
            if key != marker:
                self.download_file(key, local_dir / key[len(prefix) + 1:])
        if marker in keys:
            missing = [name for name in self.read_json(marker).get("files", {}) if not (local_dir / name).is_file()]
            if missing:
                raise StoreError(f"{self.uri(prefix)}/ is missing files its marker lists: {missing[:5]}")
        return local_dir


# ----------------------------------------------------------------------------------------------------------
# Local folder


class LocalStore(Store):
    """A folder on the local disk (default ./artifacts)."""

    def __init__(self, root: str | os.PathLike = "./artifacts"):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        """The file of `key`; StoreError when a symbolic link on the way leads out of the store's folder (a link
        planted in the store must not make a read or write touch files elsewhere on the machine)."""
        path = self.root / normalize_key(key)
        if not self._inside(path):
            raise StoreError(f"store key '{key}' leads outside the store ({self.root}) through a symbolic link; "
                             "the local store refuses it: remove the link or copy the data into the store")
        return path

    def _inside(self, path: Path) -> bool:
        resolved = path.resolve()
        return resolved == path or resolved.is_relative_to(self.root)

    def uri(self, key: str) -> str:
        return str(self._path(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        prefix = _normalize_prefix(prefix)
        # Walk only the deepest folder that can contain matches; filter by string prefix like S3 does.
        folder = self.root / prefix if not prefix or prefix.endswith("/") else (self.root / prefix).parent
        if not folder.is_dir() or not self._inside(folder):
            return []
        keys = []
        for dirpath, _dirnames, filenames in os.walk(folder):  # does not descend into linked folders
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                if os.path.islink(os.path.join(dirpath, name)) and not self._inside(Path(dirpath, name)):
                    continue  # a link out of the store is not a key of it
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise StoreKeyNotFound(f"{path} does not exist in the store") from None

    def write_bytes(self, key: str, data: bytes) -> str:
        path = self._path(key)
        _atomic_local_write(path, lambda handle: handle.write(data))
        return str(path)

    def upload_file(self, local: str | os.PathLike, key: str) -> str:
        local = Path(local)
        if not local.is_file():
            raise StoreError(f"upload_file: '{local}' is not a file")
        path = self._path(key)
        with open(local, "rb") as source:
            _atomic_local_write(path, lambda handle: shutil.copyfileobj(source, handle, 4 * _MB))
        return str(path)

    def download_file(self, key: str, local: str | os.PathLike) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise StoreKeyNotFound(f"{path} does not exist in the store")
        local = Path(local)
        with open(path, "rb") as source:
            _atomic_local_write(local, lambda handle: shutil.copyfileobj(source, handle, 4 * _MB))
        return local

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def _atomic_local_write(path: Path, write: Callable[[Any], Any]) -> None:
    """Write through a temporary file in the destination folder, fsync it, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f"{_TMP_PREFIX}{path.name}.", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------------------
# S3


# Error codes worth another attempt: throttling and transient server-side failures.
_RETRYABLE_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "500", "502", "503", "504",
}
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}


class S3Store(Store):
    """A prefix in an S3 bucket. Works with AWS and S3-compatible services (MinIO, moto, Ceph) via endpoint_url.

    `on_retry(attempt, error, delay_s)` (optional) is called before each backoff sleep; `retries` counts them
    (the run manifest reports it).
    """

    def __init__(self, cfg: StoreConfig, on_retry: Callable[[int, BaseException, float], None] | None = None):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        location = parse_store_uri(cfg.root)
        if location.kind != "s3":
            raise StoreError(f"S3Store needs an s3:// root, got '{cfg.root}'")
        self.cfg = cfg
        self.bucket: str = location.bucket  # type: ignore[assignment]
        self.prefix = location.prefix
        # what messages call it: credentials written in the URL (http://user:pass@host) are masked
        self.endpoint = mask_url_credentials(cfg.endpoint_url) if cfg.endpoint_url else f"AWS S3 ({cfg.region})"
        self.on_retry = on_retry
        self.retries = 0
        session = boto3.session.Session(profile_name=cfg.profile, region_name=cfg.region)
        self._client = session.client(
            "s3",
            endpoint_url=cfg.endpoint_url,
            config=Config(
                s3={"addressing_style": "path"},
                # One policy for every failure: ours (below). botocore's own retries would multiply the attempts.
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=cfg.retry.connect_timeout_s,
                read_timeout=cfg.retry.read_timeout_s,
            ),
        )
        threshold = cfg.multipart_threshold_mb * _MB
        self._transfer = TransferConfig(multipart_threshold=threshold, multipart_chunksize=max(8 * _MB, threshold // 4))

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix}, endpoint={self.endpoint})"

    # -- plumbing ---------------------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return _join(self.prefix, normalize_key(key))

    def _describe(self) -> str:
        return f"bucket '{self.bucket}' at {self.endpoint}"

    def _call(self, operation: str, key: str, fn: Callable[[], T]) -> T:
        """Run one S3 operation with bounded retries; turn final failures into StoreErrors that name the store."""
        from botocore.exceptions import ClientError

        retry: RetryConfig = self.cfg.retry
        for attempt in range(1, retry.max_attempts + 1):
            try:
                return fn()
            except ClientError as error:
                code = str(error.response.get("Error", {}).get("Code", ""))
                if code in _NOT_FOUND_CODES:
                    raise StoreKeyNotFound(f"s3://{self.bucket}/{self._key(key)} does not exist ({self.endpoint})") from None
                if code == "NoSuchBucket":
                    raise StoreError(f"{operation} '{key}': {self._describe()} does not exist; create it first") from None
                if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                    raise StoreError(
                        f"{operation} '{key}': access denied to {self._describe()} ({code}); check the credentials "
                        "in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) or store.profile"
                    ) from None
                if code not in _RETRYABLE_CODES:
                    raise StoreError(f"{operation} '{key}' on {self._describe()} failed: {code}: {_short(error)}") from None
                last: BaseException = error
            except Exception as error:  # noqa: BLE001 - classified right below
                if not _is_connection_error(error):
                    if _is_transfer_error(error):  # upload_file wraps S3's answer: name the store
                        raise StoreError(f"{operation} '{key}' on {self._describe()} failed: {_short(error)}") from error
                    raise
                last = error
            if attempt == retry.max_attempts:
                break
            delay = random.uniform(0, min(retry.backoff_max_s, retry.backoff_initial_s * 2 ** (attempt - 1)))
            self.retries += 1
            log.warning("store: %s '%s' on %s failed (%s), attempt %d/%d, retrying in %.2fs",
                        operation, key, self._describe(), type(last).__name__, attempt, retry.max_attempts, delay)
            if self.on_retry is not None:
                self.on_retry(attempt, last, delay)
            time.sleep(delay)
        raise StoreError(
            f"{operation} '{key}': cannot reach {self._describe()} after {retry.max_attempts} attempts "
            f"({type(last).__name__}: {_short(last)}); check that the endpoint is up and store.endpoint_url is right"
        ) from None

    # -- primitives -------------------------------------------------------------------------------------
    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def exists(self, key: str) -> bool:
        try:
            self._call("head", key, lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(key)))
            return True
        except StoreKeyNotFound:
            return False

    def list(self, prefix: str = "") -> list[str]:
        prefix = _normalize_prefix(prefix)
        full = _join(self.prefix, prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0

        def run() -> list[str]:
            keys = []
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(item["Key"][strip:] for item in page.get("Contents", []))
            return keys

        return sorted(self._call("list", prefix or "/", run))

    def read_bytes(self, key: str) -> bytes:
        return self._call("read", key,
                          lambda: self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())

    def write_bytes(self, key: str, data: bytes) -> str:
        import io

        if len(data) < self._transfer.multipart_threshold:
            self._call("write", key, lambda: self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data))
        else:
            self._call("write", key, lambda: self._client.upload_fileobj(
                io.BytesIO(data), self.bucket, self._key(key), Config=self._transfer))
        return self.uri(key)

    def upload_file(self, local: str | os.PathLike, key: str) -> str:
        local = Path(local)
        if not local.is_file():
            raise StoreError(f"upload_file: '{local}' is not a file")
        # Multipart above the threshold; the object appears only when CompleteMultipartUpload succeeds.
        self._call("upload", key, lambda: self._client.upload_file(
            str(local), self.bucket, self._key(key), Config=self._transfer))
        return self.uri(key)

    def download_file(self, key: str, local: str | os.PathLike) -> Path:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=local.parent, prefix=f"{_TMP_PREFIX}{local.name}.", delete=False)
        handle.close()
        try:
            self._call("download", key, lambda: self._client.download_file(
                self.bucket, self._key(key), handle.name, Config=self._transfer))
            os.replace(handle.name, local)
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise
        return local

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)))


def _is_connection_error(error: BaseException) -> bool:
    """Transport-level failures (refused, reset, timeouts, DNS) that a later attempt may not see."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError
    from boto3.exceptions import S3UploadFailedError

    if isinstance(error, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError)):
        return True
    # s3transfer wraps failures of upload_file; look at what it wrapped.
    if isinstance(error, S3UploadFailedError):
        return "Could not connect" in str(error) or "Connection" in str(error)
    cause = error.__cause__ or error.__context__
    return cause is not None and cause is not error and isinstance(cause, (BotoConnectionError, ConnectionError))


def _is_transfer_error(error: BaseException) -> bool:
    from boto3.exceptions import S3UploadFailedError

    return isinstance(error, S3UploadFailedError)


def _short(error: BaseException, limit: int = 300) -> str:
    text = mask_url_credentials(" ".join(str(error).split()))
    return text if len(text) <= limit else text[:limit] + "..."


# ----------------------------------------------------------------------------------------------------------
# Entry points


def open_store(cfg: StoreConfig | str | os.PathLike, **s3_options: Any) -> Store:
    """Open the store a config (or a bare root: folder or s3://bucket/prefix) describes."""
    if not isinstance(cfg, StoreConfig):
        cfg = StoreConfig(root=str(cfg))
    location = parse_store_uri(cfg.root)
    if location.kind == "s3":
        return S3Store(cfg, **s3_options)
    return LocalStore(location.path)  # type: ignore[arg-type]


def fetch_source(uri: str, store_cfg: StoreConfig | None = None, dest_dir: str | os.PathLike | None = None) -> Path:
    """Make a prompt source available as a local path.

    Local paths (and file:// URIs) are returned as they are after checking they exist. An s3:// object is
    downloaded to `dest_dir` (default: a new private folder made with mkdtemp, which the caller removes: never a
    shared, guessable cache path); an s3:// prefix that holds several objects (a dataset folder) is downloaded
    whole. `store_cfg` supplies endpoint, region, profile and retry settings for S3 (its root is ignored).
    """
    location = parse_store_uri(uri)
    if location.kind == "local":
        path = location.path
        if not path.exists():  # type: ignore[union-attr]
            raise StoreKeyNotFound(f"prompt source '{uri}' does not exist; pass an existing file or folder")
        return path  # type: ignore[return-value]
    if not location.prefix:
        raise StoreError(f"'{uri}' names a whole bucket; point at an object or a folder inside it")
    base = store_cfg or StoreConfig()
    store = open_store(base.model_copy(update={"root": f"s3://{location.bucket}"}))
    if dest_dir is None:
        dest_dir = tempfile.mkdtemp(prefix="toaflow-source-")
    dest_dir = Path(dest_dir)
    key = location.prefix
    if store.exists(key):
        return store.download_file(key, dest_dir / Path(key).name)
    if store.list(key + "/"):
        return store.download_dir(key, dest_dir / Path(key).name)
    raise StoreKeyNotFound(f"prompt source '{uri}' does not exist ({store!r})")
