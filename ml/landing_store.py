"""Where the landing zone lives: a local folder, or a prefix of an S3-compatible bucket.

One small interface, :class:`LandingStore`, with two implementations chosen from the settings
(``open_landing``):

* :class:`LocalLandingStore`: the folder of ``LEARNLOOP_LANDING_DIR`` (default
  ``$LEARNLOOP_HOME/landing``); every method is the ``ml.landing`` / ``ml.retention`` code that
  was there before (temporary name, fsync, rename), so the local default does not change.
* :class:`ObjectLandingStore`: ``LEARNLOOP_LANDING_URL=s3://bucket/prefix`` (boto3; the
  credentials, region and endpoint of the standard variables ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``, or a
  role of the pod when no key is set). The same layout: ``<prefix>/date=YYYY-MM-DD/<source>-
  <stamp>-<token>.jsonl``. An object PUT is atomic (a reader sees the whole object or none), so
  there is no temporary name; every name carries a random token and is written with
  ``If-None-Match: *``, so two writers (collector pods) never overwrite each other's object: the
  store refuses the second PUT of a name. Listing gives each object's size and ETag, so the
  sensor's day fingerprints never download an object. Readers get a streamed body, or a local
  staging copy that is removed after (``staged``: ingest reads local files).

A file is named by its *ref*: the absolute path of a local file, ``s3://bucket/key`` of an
object; the warehouse's ``raw_files.path`` and ``source_file`` columns carry it.

The keys are never logged, printed or put into metadata: a store shows itself as its URL.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from ml import landing as L

URL_VARIABLE = "LEARNLOOP_LANDING_URL"
SCHEMES = ("s3",)
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class LandingConfigError(ValueError):
    """The landing zone's configuration is wrong (the message names the setting)."""


class LandingStoreError(OSError):
    """The object store could not be read or written (the message names the bucket and the
    operation; never a key)."""


class LandingEntry(NamedTuple):
    """One finished landing file: ``ref`` (local path or ``s3://bucket/key``), its file name,
    its size and its version (a local file's mtime in ns, an object's ETag)."""

    ref: str
    name: str
    size: int
    version: str


def _check_source(source: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", source):
        raise ValueError(f"landing source name {source!r} must be 1-64 of [A-Za-z0-9_.-]")


def _day_str(day: date | str) -> str:
    day_s = day if isinstance(day, str) else day.isoformat()
    date.fromisoformat(day_s)  # validates
    return day_s


def _file_name(source: str, stamp: str, token: str, suffix: str) -> str:
    return f"{source}-{stamp}-{token}{suffix}"


def _is_data_name(name: str) -> bool:
    return not name.startswith(".") and name.endswith(L.LANDING_SUFFIXES)


class LandingStore(ABC):
    """The operations every reader and writer of the landing zone (and of its archive) uses."""

    is_local: bool

    @property
    @abstractmethod
    def url(self) -> str:
        """Where it is, for people: a folder or ``s3://bucket/prefix`` (no secret)."""

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.url == self.url

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.url))

    # ---- days and their files ----------------------------------------------------------------
    @abstractmethod
    def scan_days(self, today: date | None = None) -> tuple[list[str], list[L.BadDayFolder]]:
        """(valid days, sorted; folders that are not valid days, with the reason)
        (``ml.landing.scan_partitions``)."""

    @abstractmethod
    def day_url(self, day: date | str) -> str:
        """The folder (prefix) of one day."""

    @abstractmethod
    def files(self, day: date | str) -> list[LandingEntry]:
        """The finished files of one day, sorted by name (temporary files left out)."""

    @abstractmethod
    def fingerprint(self, entries: list[LandingEntry]) -> str:
        """What a set of files looks like (names, sizes, versions): equal fingerprints mean the
        same files."""

    def fingerprints(self, days: Iterable[str] | None = None) -> dict[str, str]:
        """day -> ``fingerprint`` of its files, for ``days`` (default every valid day)."""
        days = self.scan_days()[0] if days is None else days
        return {day: self.fingerprint(self.files(day)) for day in days}

    @abstractmethod
    def entry(self, ref: str) -> LandingEntry | None:
        """The entry of one file by its ref; None when it is not there."""

    def fingerprint_of(self, refs: Iterable[str]) -> str:
        """``fingerprint`` of the files ``refs`` (each must exist)."""
        entries = []
        for ref in refs:
            e = self.entry(ref)
            if e is None:
                raise FileNotFoundError(f"landing file {ref} is gone")
            entries.append(e)
        return self.fingerprint(entries)

    def owns(self, ref: str) -> bool:
        """Whether ``ref`` lies in this store."""
        return ref.startswith(self.url.rstrip("/") + "/")

    def relative(self, ref: str) -> str:
        """``date=D/name`` of a ref of this store."""
        root = self.url.rstrip("/") + "/"
        if not ref.startswith(root):
            raise ValueError(f"{ref} is not in the landing zone {self.url}")
        return ref[len(root):]

    def ref(self, relative: str) -> str:
        """The ref of ``date=D/name`` (or another path below the root) in this store."""
        return self.url.rstrip("/") + "/" + relative.lstrip("/")

    # ---- writing -----------------------------------------------------------------------------
    @abstractmethod
    def write(self, source: str, parts: Mapping[date | str, bytes],
              suffix: str = ".jsonl") -> list[str]:
        """Write one file per day (``parts``: day -> bytes) as one unit, each under a name no
        other writer uses; return the refs in the order of ``parts``."""

    # ---- reading -----------------------------------------------------------------------------
    @abstractmethod
    def open(self, ref: str) -> BinaryIO:
        """The bytes of one file, streamed (a context manager)."""

    def read_bytes(self, ref: str) -> bytes:
        with self.open(ref) as fh:
            return fh.read()

    def sha256(self, ref: str) -> str:
        h = hashlib.sha256()
        with self.open(ref) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    @abstractmethod
    @contextmanager
    def staged(self, refs: list[str]) -> Iterator[list[Path]]:
        """Local files with the bytes of ``refs`` (in order, same file names) for as long as the
        context lasts: the files themselves on a folder, copies in a temporary folder (removed
        after) on object storage."""

    # ---- root files (the importers' registry, the demo's truth.jsonl) -------------------------
    @abstractmethod
    def read_text(self, relative: str) -> str | None:
        """A small file below the root (not a landing file), or None."""

    @abstractmethod
    def write_text(self, relative: str, text: str) -> None:
        """Replace a small file below the root, atomically."""

    @abstractmethod
    def find(self, name: str) -> list[str]:
        """The refs of every file called ``name`` below the root, sorted."""

    # ---- removing and moving -----------------------------------------------------------------
    @abstractmethod
    def remove(self, ref: str) -> None:
        """Delete one file (no error when it is gone)."""

    @abstractmethod
    def delete_day(self, day: date | str) -> list[str]:
        """Remove every file of ``day`` (temporary ones too) and its folder; return the refs of
        the data files removed."""

    @abstractmethod
    def remove_stale_temp_files(self, older_than_s: float, now: float | None = None) -> list[str]:
        """Delete the temporary files crashed writes left behind (none on object storage)."""


# ---- a local folder ---------------------------------------------------------------------------


class LocalLandingStore(LandingStore):
    """The landing zone (or archive) in a local folder: ``ml.landing``'s functions."""

    is_local = True

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser().resolve()

    @property
    def url(self) -> str:
        return str(self.root)

    def scan_days(self, today=None):
        return L.scan_partitions(self.root, today)

    def day_url(self, day):
        return str(L.partition_dir(self.root, day))

    def files(self, day):
        out = []
        for p in L.list_files(self.root, day):
            st = p.stat()
            out.append(LandingEntry(str(p), p.name, st.st_size, str(st.st_mtime_ns)))
        return out

    def fingerprint(self, entries):
        return L.fingerprint(Path(e.ref) for e in entries)

    def fingerprints(self, days=None):
        return L.day_fingerprints(self.root, days)

    def fingerprint_of(self, refs):
        return L.fingerprint(Path(r) for r in refs)

    def entry(self, ref):
        p = Path(ref)
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        return LandingEntry(str(p), p.name, st.st_size, str(st.st_mtime_ns))

    def owns(self, ref):
        return Path(ref).is_relative_to(self.root)

    def relative(self, ref):
        return str(Path(ref).relative_to(self.root))

    def ref(self, relative):
        return str(self.root / relative)

    def write(self, source, parts, suffix=".jsonl"):
        return [str(p) for p in L.write_landing_files(self.root, source, parts, suffix)]

    def open(self, ref):
        return open(ref, "rb")  # noqa: SIM115 - the caller's context manager closes it

    @contextmanager
    def staged(self, refs):
        yield [Path(r) for r in refs]

    def read_text(self, relative):
        p = self.root / relative
        return p.read_text(encoding="utf-8") if p.exists() else None

    def write_text(self, relative, text):
        p = self.root / relative
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)

    def find(self, name):
        return sorted(str(p) for p in self.root.rglob(name)) if self.root.exists() else []

    def remove(self, ref):
        Path(ref).unlink(missing_ok=True)

    def delete_day(self, day):
        folder = L.partition_dir(self.root, day)
        if not folder.is_dir():
            return []
        removed = [str(p) for p in sorted(folder.iterdir()) if p.is_file()
                   and p.suffix in L.LANDING_SUFFIXES and not p.name.startswith(".")]
        shutil.rmtree(folder)
        L.fsync_dir(folder.parent)
        return removed

    def remove_stale_temp_files(self, older_than_s, now=None):
        return [str(p) for p in L.remove_stale_temp_files(self.root, older_than_s, now)]


# ---- an S3-compatible bucket ------------------------------------------------------------------


def parse_url(url: str, variable: str = URL_VARIABLE) -> tuple[str, str]:
    """(bucket, prefix without slashes at either end) of ``s3://bucket[/prefix]``; a
    ``LandingConfigError`` naming ``variable`` and what is wrong otherwise."""
    from urllib.parse import urlsplit

    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme.lower() not in SCHEMES:
        scheme = f"{parts.scheme}://" if parts.scheme else "(none)"
        raise LandingConfigError(
            f"{variable}={text!r}: unsupported scheme {scheme}; expected s3://BUCKET/PREFIX "
            f"(any S3-compatible store: set AWS_ENDPOINT_URL), or use LEARNLOOP_LANDING_DIR "
            f"for a folder")
    bucket = parts.netloc
    if not bucket:
        raise LandingConfigError(f"{variable}={text!r} names no bucket: expected "
                                 f"s3://BUCKET/PREFIX")
    if "@" in bucket or ":" in bucket:
        raise LandingConfigError(f"{variable}: put no credentials or port in the URL (the keys "
                                 f"come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the "
                                 f"endpoint from AWS_ENDPOINT_URL)")
    if not _BUCKET_RE.fullmatch(bucket):
        raise LandingConfigError(f"{variable}={text!r}: {bucket!r} is not a valid bucket name "
                                 f"(3-63 of a-z, 0-9, '.', '-')")
    if parts.query or parts.fragment:
        raise LandingConfigError(f"{variable}={text!r}: no query or fragment allowed")
    prefix = parts.path.strip("/")
    if "//" in prefix or any(seg in (".", "..") for seg in prefix.split("/") if prefix):
        raise LandingConfigError(f"{variable}={text!r}: the prefix {prefix!r} has an empty, "
                                 f"'.' or '..' segment")
    return bucket, prefix


def check_credentials(env: Mapping[str, str] | None = None) -> None:
    """Both keys or neither (then boto3's other sources: a pod's role, a profile); a
    ``LandingConfigError`` naming the missing variable otherwise. Values are never shown."""
    env = os.environ if env is None else env
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if key and not secret:
        raise LandingConfigError("the landing zone is on object storage and AWS_ACCESS_KEY_ID "
                                 "is set but AWS_SECRET_ACCESS_KEY is not")
    if secret and not key:
        raise LandingConfigError("the landing zone is on object storage and "
                                 "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not")


class _Body:
    """A streamed object body as a binary file (``read``, iteration by lines, a context)."""

    def __init__(self, body: Any):
        self._body = body

    def read(self, n: int = -1) -> bytes:
        return self._body.read() if n is None or n < 0 else self._body.read(n)

    def __iter__(self) -> Iterator[bytes]:
        return self._body.iter_lines(keepends=True)

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_CLIENT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
               "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
_clients: dict[tuple[int, str], Any] = {}
_clients_lock = threading.Lock()


def s3_client():
    """A boto3 S3 client for the AWS_* variables of the environment, one per process and
    configuration (making one costs tens of ms: the collector's worker processes and the
    sensor's ticks reuse it; boto3 clients are thread-safe)."""
    env = hashlib.sha256(repr([os.environ.get(k) for k in _CLIENT_ENV]).encode()).hexdigest()
    key = (os.getpid(), env)
    with _clients_lock:
        if key not in _clients:
            import boto3
            from botocore.config import Config

            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            options: dict[str, Any] = {"retries": {"mode": "standard", "max_attempts": 5}}
            if endpoint:  # an S3-compatible store (MinIO, Ceph, R2): path-style URLs, and the
                # checksums only where the API requires them (not every store knows the new ones)
                options.update(s3={"addressing_style": "path"},
                               request_checksum_calculation="when_required",
                               response_checksum_validation="when_required")
            _clients[key] = boto3.session.Session().client("s3", config=Config(**options))
        return _clients[key]


class ObjectLandingStore(LandingStore):
    """The landing zone (or archive) under ``s3://bucket/prefix`` of an S3-compatible store."""

    is_local = False

    def __init__(self, bucket: str, prefix: str = "", variable: str = URL_VARIABLE):
        self.bucket, self.prefix, self.variable = bucket, prefix.strip("/"), variable
        self._client = None

    @classmethod
    def from_url(cls, url: str, variable: str = URL_VARIABLE) -> ObjectLandingStore:
        bucket, prefix = parse_url(url, variable)
        check_credentials()
        return cls(bucket, prefix, variable)

    # the client is made on first use, in the process that uses it (the collector hands a
    # store to its worker processes: it must pickle without a client)
    def __getstate__(self) -> dict:
        return {"bucket": self.bucket, "prefix": self.prefix, "variable": self.variable}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["bucket"], state["prefix"], state["variable"])

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def sub(self, name: str) -> ObjectLandingStore:
        """The store under ``<prefix>/<name>`` of the same bucket (the archive)."""
        return ObjectLandingStore(self.bucket, f"{self.prefix}/{name}".strip("/"), self.variable)

    @property
    def client(self):
        if self._client is None:
            self._client = s3_client()
        return self._client

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _day_prefix(self, day: date | str) -> str:
        return self._key(f"date={_day_str(day)}/")

    def _ref_of_key(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _key_of_ref(self, ref: str) -> str:
        head = f"s3://{self.bucket}/"
        if not ref.startswith(head):
            raise ValueError(f"{ref} is not an object of s3://{self.bucket}")
        return ref[len(head):]

    def _fail(self, what: str, exc: Exception) -> LandingStoreError:
        """A clear error for a failed call: the bucket, the operation, the store's code."""
        from botocore.exceptions import ClientError, NoCredentialsError

        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                return LandingStoreError(
                    f"{self.variable}: the bucket {self.bucket!r} does not exist at "
                    f"{self.client.meta.endpoint_url} ({what}); create it or fix the URL")
            if code == "PreconditionFailed":
                return LandingStoreError(
                    f"{what} on {self.url} failed: PreconditionFailed (an object of that name "
                    f"exists, written by another writer: it was not overwritten)")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
                return LandingStoreError(
                    f"{self.variable}: {what} on {self.url} was refused ({code}): check "
                    f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's policy")
            return LandingStoreError(f"{what} on {self.url} failed: {code or exc}")
        if isinstance(exc, NoCredentialsError):
            return LandingStoreError(f"{self.variable}: no credentials for {self.url}: set "
                                     f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or give "
                                     f"the pod a role)")
        return LandingStoreError(f"{what} on {self.url} failed: {type(exc).__name__}: {exc}")

    def _call(self, what: str, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(what, exc) from exc

    def _list(self, prefix: str, delimiter: str | None = None) -> Iterator[dict]:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        try:
            yield from self.client.get_paginator("list_objects_v2").paginate(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(f"listing {prefix or '/'}", exc) from exc

    # ---- days and their files ----------------------------------------------------------------
    def scan_days(self, today=None):
        root = self._key("")
        folders: list[str] = []
        for page in self._list(root, delimiter="/"):
            folders += [p["Prefix"][len(root):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        days: list[str] = []
        bad: list[L.BadDayFolder] = []
        for name in sorted(folders):
            if name.startswith((".", "_")) or not name:
                continue
            m = L.PARTITION_RE.match(name)
            if not m:
                bad.append(L.BadDayFolder(name, "not a day folder: expected date=YYYY-MM-DD"))
                continue
            try:
                L.check_day(m.group(1), today)
            except ValueError as exc:
                bad.append(L.BadDayFolder(name, str(exc)))
                continue
            days.append(m.group(1))
        return sorted(days), bad

    def day_url(self, day):
        return self._ref_of_key(self._day_prefix(day)).rstrip("/")

    def files(self, day):
        prefix = self._day_prefix(day)
        out = []
        for page in self._list(prefix, delimiter="/"):  # not the objects of sub-folders
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix):]
                if _is_data_name(name):
                    out.append(LandingEntry(self._ref_of_key(obj["Key"]), name, int(obj["Size"]),
                                            obj["ETag"].strip('"')))
        return sorted(out, key=lambda e: e.name)

    def fingerprint(self, entries):
        h = hashlib.sha256()
        for e in sorted(entries, key=lambda e: e.ref):
            h.update(f"{e.name}:{e.size}:{e.version}\n".encode())
        return h.hexdigest()[:16]

    def entry(self, ref):
        from botocore.exceptions import ClientError

        key = self._key_of_ref(ref)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail(f"reading {key}", exc) from exc
        return LandingEntry(ref, key.rsplit("/", 1)[-1], int(head["ContentLength"]),
                            head["ETag"].strip('"'))

    def fingerprint_of(self, refs):
        refs = list(refs)
        # one listing per day folder instead of one HEAD per object
        by_folder: dict[str, dict[str, LandingEntry]] = {}
        entries = []
        for ref in refs:
            folder = ref.rsplit("/", 1)[0]
            if folder not in by_folder:
                prefix = self._key_of_ref(folder) + "/"
                by_folder[folder] = {
                    self._ref_of_key(o["Key"]): LandingEntry(
                        self._ref_of_key(o["Key"]), o["Key"].rsplit("/", 1)[-1], int(o["Size"]),
                        o["ETag"].strip('"'))
                    for page in self._list(prefix, delimiter="/")
                    for o in page.get("Contents", [])}
            e = by_folder[folder].get(ref)
            if e is None:
                raise FileNotFoundError(f"landing file {ref} is gone")
            entries.append(e)
        return self.fingerprint(entries)

    # ---- writing -----------------------------------------------------------------------------
    def _put_new(self, key: str, data: bytes) -> None:
        """PUT that never replaces an object (``If-None-Match: *``): the name is new, or the
        store refuses it (another writer's object stays)."""
        self._call(f"writing {key}", self.client.put_object, Bucket=self.bucket, Key=key,
                   Body=data, IfNoneMatch="*", ContentType="application/octet-stream")

    def write(self, source, parts, suffix=".jsonl"):
        _check_source(source)
        days = [_day_str(d) for d in parts]  # validates every day first
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        token = uuid.uuid4().hex[:12]
        keys = [self._key(f"date={day}/{_file_name(source, stamp, token, suffix)}")
                for day in days]
        written: list[str] = []
        try:
            for key, data in zip(keys, parts.values(), strict=True):
                self._put_new(key, data)
                written.append(key)
        except BaseException as exc:
            for key in written:  # all days or none
                try:
                    self._call(f"removing {key}", self.client.delete_object,
                               Bucket=self.bucket, Key=key)
                except LandingStoreError as undo:  # the write's own error is the one raised
                    exc.add_note(f"and {key} of this unit could not be removed: {undo}")
            raise
        return [self._ref_of_key(k) for k in keys]

    # ---- reading -----------------------------------------------------------------------------
    def open(self, ref):
        key = self._key_of_ref(ref)
        out = self._call(f"reading {key}", self.client.get_object, Bucket=self.bucket, Key=key)
        return _Body(out["Body"])

    @contextmanager
    def staged(self, refs):
        with tempfile.TemporaryDirectory(prefix="learnloop-landing-") as tmp:
            paths = []
            for i, ref in enumerate(refs):
                # one folder per file: the same name may be in the landing zone and the archive
                path = Path(tmp) / str(i) / ref.rsplit("/", 1)[-1]
                path.parent.mkdir()
                key = self._key_of_ref(ref)
                self._call(f"reading {key}", self.client.download_file, Bucket=self.bucket,
                           Key=key, Filename=str(path))
                paths.append(path)
            yield paths

    def read_text(self, relative):
        from botocore.exceptions import ClientError

        key = self._key(relative)
        try:
            out = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._fail(f"reading {key}", exc) from exc
        return out["Body"].read().decode("utf-8")

    def write_text(self, relative, text):
        key = self._key(relative)
        self._call(f"writing {key}", self.client.put_object, Bucket=self.bucket, Key=key,
                   Body=text.encode("utf-8"))

    def find(self, name):
        return sorted(self._ref_of_key(o["Key"]) for page in self._list(self._key(""))
                      for o in page.get("Contents", []) if o["Key"].rsplit("/", 1)[-1] == name)

    # ---- removing and moving -----------------------------------------------------------------
    def remove(self, ref):
        key = self._key_of_ref(ref)
        self._call(f"removing {key}", self.client.delete_object, Bucket=self.bucket, Key=key)

    def delete_day(self, day):
        prefix = self._day_prefix(day)
        keys = [o["Key"] for page in self._list(prefix) for o in page.get("Contents", [])]
        for i in range(0, len(keys), 1000):
            out = self._call(f"removing {prefix}", self.client.delete_objects,
                             Bucket=self.bucket,
                             Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]],
                                     "Quiet": True})
            if out.get("Errors"):
                first = out["Errors"][0]
                raise LandingStoreError(f"removing {prefix} on {self.url}: {len(out['Errors'])} "
                                        f"object(s) not removed ({first.get('Code')}: "
                                        f"{first.get('Key')})")
        return [self._ref_of_key(k) for k in keys if _is_data_name(k[len(prefix):])]

    def remove_stale_temp_files(self, older_than_s, now=None):
        return []  # objects appear whole: a write leaves no temporary object

    def copy_from(self, src: ObjectLandingStore, ref: str, dest_key: str) -> None:
        """Server-side copy of ``ref`` (an object of ``src``) to ``dest_key`` of this store."""
        self._call(f"copying to {dest_key}", self.client.copy_object, Bucket=self.bucket,
                   Key=dest_key, CopySource={"Bucket": src.bucket, "Key": src._key_of_ref(ref)})


def is_url(location: object) -> bool:
    return isinstance(location, str) and "://" in location


def open_landing(location: LandingStore | Path | str,
                 variable: str = URL_VARIABLE) -> LandingStore:
    """The store of a location: a store as it is, ``scheme://...`` an object store (a
    ``LandingConfigError`` for a scheme other than s3), anything else a local folder."""
    if isinstance(location, LandingStore):
        return location
    if is_url(location):
        return ObjectLandingStore.from_url(location, variable)
    return LocalLandingStore(location)


def archive_store(landing: LandingStore, archive: LandingStore | Path | str | None
                  ) -> LandingStore:
    """The archive of ``landing``: ``archive`` when given; else, on object storage,
    ``<landing prefix>/_archive`` (a folder the landing scan skips)."""
    if archive is not None and archive != "":
        return open_landing(archive, "LEARNLOOP_ARCHIVE_URL")
    if isinstance(landing, ObjectLandingStore):
        return landing.sub("_archive")
    raise ValueError("a local landing zone needs its archive folder")
