"""DuckLake: the warehouse as a lake (a catalog database plus Parquet data files), so several
processes and machines write it at once.

A lake is named by a URL, ``ducklake:<catalog>``, where ``<catalog>`` is ``postgres:<libpq
connection string>`` (e.g. ``ducklake:postgres:dbname=lake host=pg user=learnloop``: the
multi-writer setup) or the path of a DuckDB catalog file (one process at a time), and by the
folder or object-storage prefix of its data files (``DATA_PATH``). :func:`open_lake` returns a
DuckDB connection with the lake ATTACHed as ``lake`` and USEd, so SQL written for the DuckDB
file warehouse runs unchanged.

Extensions load offline: the ``ducklake``, ``postgres_scanner`` and ``httpfs`` extensions come
as pip packages (``duckdb-extension-<name>``, the same version as ``duckdb``) and are LOADed from
their installed files; DuckDB's automatic install and load of extensions (from the network) is
off on every lake connection, and the extensions' signatures are checked (they are signed).

Secrets: the URL may carry a password (``password=...`` or ``postgresql://user:pw@host``).
:class:`Lake` prints redacted, and an error raised while attaching is re-raised with the
password redacted (DuckDB's own message repeats the connection string). Better: give the
password to libpq out of band (``PGPASSWORD``, ``~/.pgpass``); the URL then holds none.
Data files on S3 (or an S3-compatible store) read the credentials of the standard variables
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` and
``AWS_ENDPOINT_URL`` into a DuckDB secret of the connection.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import duckdb

ALIAS = "lake"
"""The name the lake is attached under (``USE lake``); dbt's profile uses it as ``database``."""

SCHEME = "ducklake:"
REMOTE_SCHEMES = ("s3://", "s3a://", "gs://", "gcs://", "r2://", "http://", "https://")
_UNSUPPORTED_CATALOGS = ("sqlite:", "mysql:", "md:", "motherduck:")

# DuckDB must never fetch an extension from the network: every extension a lake needs is
# LOADed from its pip package's file
OFFLINE_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


class LakeError(RuntimeError):
    """A lake that cannot be used as configured (the message names the setting to fix)."""


_SECRET_PATTERNS = (
    # libpq keyword form: password=secret, password = 'se cret'
    (re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE), r"\1***"),
    # URI form: postgresql://user:secret@host
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*):([^@\s]*)@", re.IGNORECASE), r"\1:***@"),
)


def redact(text: str) -> str:
    """``text`` with every password of a connection string replaced by ``***``."""
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def is_lake_url(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower().startswith(SCHEME)


@dataclass(frozen=True)
class Lake:
    """A DuckLake warehouse: ``url`` (``ducklake:...``, may hold a password: never printed) and
    ``data_path`` (a folder, or an object-storage prefix such as ``s3://bucket/lake/``)."""

    url: str = field(repr=False)
    data_path: str

    def __post_init__(self) -> None:
        if not is_lake_url(self.url):
            raise LakeError(f"a DuckLake URL starts with {SCHEME!r}, e.g. 'ducklake:postgres:"
                            f"dbname=lake host=127.0.0.1 user=postgres'; got {redact(self.url)!r}")
        catalog = self.catalog
        if not catalog:
            raise LakeError(f"the DuckLake URL {self.redacted!r} names no catalog")
        if catalog.lower().startswith(_UNSUPPORTED_CATALOGS):
            raise LakeError(f"DuckLake catalog {redact(catalog)!r} is not supported: use "
                            f"'postgres:<connection string>' (several writers) or the path of "
                            f"a DuckDB catalog file")
        if not str(self.data_path).strip():
            raise LakeError("a DuckLake warehouse needs the place of its data files: set "
                            "LEARNLOOP_WAREHOUSE_DATA_PATH (a folder every writer sees, or "
                            "s3://bucket/prefix/)")
        if self.data_path.lower().startswith(("az://", "azure://", "abfss://")):
            raise LakeError(f"data path {self.data_path!r}: Azure storage needs the azure "
                            f"extension, which is not installed; use a folder or s3://")

    @property
    def catalog(self) -> str:
        return self.url.strip()[len(SCHEME):].strip()

    @property
    def on_postgres(self) -> bool:
        return self.catalog.lower().startswith("postgres:")

    @property
    def remote_data(self) -> bool:
        return self.data_path.lower().startswith(REMOTE_SCHEMES)

    @property
    def redacted(self) -> str:
        return redact(self.url.strip())

    def __str__(self) -> str:
        return f"{self.redacted} (data {self.data_path})"

    def __repr__(self) -> str:
        return f"Lake({self.redacted!r}, data_path={self.data_path!r})"

    def extensions(self) -> list[str]:
        """The extensions this lake needs, in load order."""
        return (["ducklake"] + (["postgres_scanner"] if self.on_postgres else [])
                + (["httpfs"] if self.remote_data else []))


def extension_file(name: str) -> Path:
    """The extension file of the pip package ``duckdb-extension-<name>``
    (``<package>/extensions/v<duckdb version>/<name>.duckdb_extension``)."""
    package = f"duckdb_extension_{name}"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LakeError(f"the DuckDB extension {name!r} is not installed: pip install "
                        f"duckdb-extension-{name.replace('_', '-')}=={duckdb.__version__}")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.is_file():
        found = sorted(p.parent.name for p in root.glob("extensions/v*/*.duckdb_extension"))
        raise LakeError(f"the DuckDB extension package {package} has no build for duckdb "
                        f"{duckdb.__version__} (it has {found or 'none'}): pin both to the "
                        f"same version")
    return path


def load_extensions(con: duckdb.DuckDBPyConnection, names: list[str]) -> None:
    """LOAD ``names`` from their pip packages' files (no download)."""
    for name in names:
        path = str(extension_file(name)).replace("'", "''")
        con.execute(f"LOAD '{path}'")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def s3_secret_sql(env: dict[str, str] | None = None) -> str | None:
    """``CREATE OR REPLACE SECRET`` for S3 from the standard AWS variables of ``env`` (default:
    the process environment); None when no key is set (public buckets, or credentials given
    another way, e.g. a DuckDB secret of your own)."""
    env = os.environ if env is None else env
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not key:
        return None
    if not secret:
        raise LakeError("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
    parts = ["TYPE s3", f"KEY_ID {_quote(key)}", f"SECRET {_quote(secret)}"]
    if env.get("AWS_SESSION_TOKEN"):
        parts.append(f"SESSION_TOKEN {_quote(env['AWS_SESSION_TOKEN'])}")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        parts.append(f"REGION {_quote(region)}")
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:  # an S3-compatible store (MinIO, Ceph, R2): host[:port], path-style URLs
        parsed = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        parts += [f"ENDPOINT {_quote(parsed.netloc)}", "URL_STYLE 'path'",
                  f"USE_SSL {'true' if parsed.scheme == 'https' else 'false'}"]
    return f"CREATE OR REPLACE SECRET learnloop_s3 ({', '.join(parts)})"


def attach_sql(lake: Lake, read_only: bool = False, alias: str = ALIAS) -> str:
    options = [f"DATA_PATH {_quote(lake.data_path)}"]
    if read_only:
        options.append("READ_ONLY")
    return f"ATTACH {_quote(lake.url.strip())} AS {alias} ({', '.join(options)})"


def prepare(con: duckdb.DuckDBPyConnection, lake: Lake) -> None:
    """Load what ``lake`` needs on ``con`` (extensions, the S3 secret) and create its local data
    folder; no ATTACH."""
    load_extensions(con, lake.extensions())
    if lake.remote_data and lake.data_path.lower().startswith(("s3://", "s3a://", "r2://")):
        sql = s3_secret_sql()
        if sql:
            con.execute(sql)
    if not lake.remote_data:
        Path(lake.data_path).expanduser().mkdir(parents=True, exist_ok=True)


NOT_CREATED = "creating a new DuckLake is explicitly disabled"
_INIT_RACE = "Failed to initialize DuckLake"
_INIT_ATTEMPTS = 8


def open_lake(lake: Lake, read_only: bool = False,
              config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (in-memory database, automatic extension download off) with ``lake``
    attached as ``lake`` and in use: unqualified names are the lake's tables (schema ``main``).
    The first read-write connection creates the catalog; when several processes create the same
    new catalog at once, the losers' creation fails on the winner's tables and rolls back, and
    they attach again (up to 8 times, after a short random wait). Read-only on a catalog never
    written: :class:`LakeError` (:func:`lake_exists` tells first). Errors name the lake with
    its password redacted. ``config``: more DuckDB settings of the connection (the offline ones
    cannot be overridden)."""
    for attempt in range(1, _INIT_ATTEMPTS + 1):
        try:
            return _open_lake(lake, read_only, config)
        except LakeError as exc:
            if _INIT_RACE not in str(exc) or "already exists" not in str(exc) \
                    or attempt == _INIT_ATTEMPTS:
                raise
            time.sleep(random.uniform(0.05, 0.1 * attempt))
    raise AssertionError("unreachable")


def _open_lake(lake: Lake, read_only: bool = False,
               config: dict | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={**(config or {}), **OFFLINE_CONFIG})
    try:
        con.execute("SET enable_progress_bar = false")  # the catalog's queries are not ours
        attach(con, lake, read_only)
        con.execute(f"USE {ALIAS}")
    except BaseException:
        con.close()
        raise
    return con


def attach(con: duckdb.DuckDBPyConnection, lake: Lake, read_only: bool = False) -> None:
    """Prepare ``con`` for ``lake`` (:func:`prepare`) and ATTACH it as ``lake``; a failure is a
    :class:`LakeError` whose message names the lake with its password redacted."""
    try:
        prepare(con, lake)
        con.execute(attach_sql(lake, read_only))
    except duckdb.Error as exc:
        message = redact(" ".join(str(exc).split()))
        if NOT_CREATED in message:
            raise LakeError(f"the DuckLake warehouse {lake} has no catalog yet (nothing has "
                            f"been written to it): {message}") from None
        # from None: the original exception's text holds the unredacted connection string
        raise LakeError(f"cannot attach the DuckLake warehouse {lake}: {message}") from None


def lake_exists(lake: Lake) -> bool:
    """Whether ``lake``'s catalog has been created (by a first read-write connection)."""
    try:
        open_lake(lake, read_only=True).close()
    except LakeError as exc:
        if NOT_CREATED in str(exc):
            return False
        raise
    return True
