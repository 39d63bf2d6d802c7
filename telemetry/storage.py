"""Where a log lives: a local directory or any ``pyarrow.fs`` URI.

A log root is a plain path (relative ones are from the cwd), a ``file://``
URI, or an object-store URI such as ``s3://bucket/prefix`` or
``gs://bucket/prefix``. :class:`LogLocation` turns it into a pyarrow
filesystem and a path on it, once, and holds the rules every writer and
reader of the decision and outcome logs shares:

- readers never see half a file. On local disk a file is written under a
  hidden temporary name and renamed into place. An object store has no
  rename, but an object only appears when its upload completes (one PUT, or
  a completed multipart upload), so the final name is written directly, from
  a buffer already holding the whole file: a failure while the Parquet is
  encoded uploads nothing;
- readers skip every name under the root with a part that starts with ``.``
  or ``_`` (the local temporary files, and other tools' ``_temporary``
  directories), whatever the filesystem.

S3 takes its credentials from the standard environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``),
its region from ``AWS_REGION`` or ``AWS_DEFAULT_REGION``, and an endpoint
(MinIO, a test server) from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``.
pyarrow reads the first endpoint variable itself but not the second, so both
are passed explicitly. Every failure of the storage itself surfaces as
:class:`LogStorageError` with a one-line message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")


class LogStorageError(OSError):
    """A log location that cannot be resolved, reached, read or written.

    An :class:`OSError`, as the local failures it stands beside are; the
    message is one line, fit for the CLI to print as it is.
    """


def is_uri(where: str | os.PathLike[str]) -> bool:
    """Whether ``where`` names a location by URI (``scheme://...``) rather than a path."""
    return isinstance(where, str) and _URI.match(where) is not None


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (pyarrow's AWS messages may span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@contextmanager
def storage_errors(doing: str,
                   also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Turn a filesystem failure (an :class:`OSError`, or one of ``also``) inside
    the block into :class:`LogStorageError` whose message starts with ``doing``
    (e.g. ``cannot read s3://b/log``)."""
    caught: tuple[type[Exception], ...] = (OSError, *also)
    try:
        yield
    except LogStorageError:
        raise
    except caught as exc:
        raise LogStorageError(f"{doing}: {one_line(exc)}") from None


def _first_env(names: tuple[str, ...]) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def _s3_filesystem(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    options: dict[str, Any] = {}
    if region:
        options["region"] = region
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["endpoint_override"] = parts.netloc
        options["scheme"] = parts.scheme or "https"
    return pafs.S3FileSystem(**options)


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    parts = urlsplit(uri)
    if parts.scheme.lower() == "s3" and not parts.query:
        endpoint = _first_env(ENDPOINT_VARIABLES)
        region = _first_env(REGION_VARIABLES)
        # Without either, pyarrow's own resolution asks AWS for the bucket's region.
        if endpoint or region:
            return _s3_filesystem(endpoint, region), f"{parts.netloc}{parts.path}"
    filesystem, path = pafs.FileSystem.from_uri(uri)
    return filesystem, path


@dataclass(frozen=True, slots=True)
class LogLocation:
    """A directory (or one file) of a log: the filesystem, the path on it, and
    the URI or path to show people."""

    fs: pafs.FileSystem
    path: str
    uri: str
    local: bool

    @classmethod
    def resolve(cls, where: str | os.PathLike[str] | LogLocation) -> LogLocation:
        """The location of ``where``: a path (relative ones from the cwd) or a URI.

        Resolving a path or an S3 URI with an endpoint or region in the
        environment makes no request; raises :class:`LogStorageError` for a URI
        pyarrow cannot open.
        """
        if isinstance(where, LogLocation):
            return where
        if not is_uri(where):
            shown = os.fspath(where)
            return cls(pafs.LocalFileSystem(), os.path.abspath(shown), shown, True)
        uri = str(where)
        # pyarrow answers a URI it cannot parse, or an unknown scheme, with ArrowInvalid.
        with storage_errors(f"cannot open {uri}", also=(pa.ArrowInvalid,)):
            filesystem, path = _filesystem(uri)
        local = isinstance(filesystem, pafs.LocalFileSystem)
        trimmed = path.rstrip("/") or path
        return cls(filesystem, trimmed, uri if local else uri.rstrip("/"), local)

    def __str__(self) -> str:
        return self.uri

    def join(self, *parts: str) -> LogLocation:
        """The location ``parts`` below this one (``/``-separated names)."""
        if self.local:
            path = os.path.join(self.path, *parts)
            uri = os.path.join(self.uri, *parts)
        else:
            path = "/".join((self.path, *parts))
            uri = "/".join((self.uri.rstrip("/"), *parts))
        return LogLocation(self.fs, path, uri, self.local)

    def info(self) -> pafs.FileInfo:
        with storage_errors(f"cannot reach {self.uri}"):
            return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return bool(self.info().type != pafs.FileType.NotFound)

    def is_dir(self) -> bool:
        return bool(self.info().type == pafs.FileType.Directory)

    def visible_parquet_files(self) -> list[str]:
        """The finished Parquet files under this directory, recursively, sorted,
        as paths on :attr:`fs`; names (or directories) starting with ``.`` or
        ``_`` are left out: they are files still being written."""
        selector = pafs.FileSelector(self.path, recursive=True, allow_not_found=True)
        with storage_errors(f"cannot list {self.uri}"):
            infos = self.fs.get_file_info(selector)
        base = self.path.rstrip("/") + "/"
        files = []
        for info in infos:
            if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
                continue
            relative = info.path[len(base):] if info.path.startswith(base) else info.path
            if self.local:
                relative = relative.replace(os.sep, "/")
            if any(part.startswith((".", "_")) for part in relative.split("/")):
                continue
            files.append(info.path)
        return sorted(files)

    def ensure_dir(self) -> None:
        """Create the directory on local disk; object stores have no directories."""
        if self.local:
            with storage_errors(f"cannot create {self.uri}"):
                make_private_dirs(Path(self.path))

    def write_parquet(self, table: pa.Table, name: str, **options: Any) -> LogLocation:
        """Write ``table`` as ``<this>/<name>`` so that readers see all of it or
        nothing (see the module docstring); ``options`` go to
        :func:`pyarrow.parquet.write_table` (zstd unless told otherwise)."""
        options.setdefault("compression", "zstd")
        target = self.join(name)
        if self.local:
            self.ensure_dir()
            tmp = Path(self.path) / f".{name}.tmp"
            try:
                # Owner-only from the first byte: the logs hold unit ids and features.
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
                with os.fdopen(fd, "wb") as out:
                    pq.write_table(table, out, **options)
                os.replace(tmp, target.path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return target
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **options)
        data = sink.getvalue()
        with storage_errors(f"cannot write {target.uri}"), \
                self.fs.open_output_stream(target.path) as out:
            out.write(data)
        return target


PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and any missing parents readable by the owner only;
    directories that already exist keep their mode."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:  # another writer made it first
            continue
        os.chmod(directory, PRIVATE_DIR_MODE)  # mkdir's mode is masked by the umask


def visible_parquet_files(root: str | os.PathLike[str] | LogLocation) -> list[str]:
    """The finished Parquet files under ``root`` (see
    :meth:`LogLocation.visible_parquet_files`)."""
    return LogLocation.resolve(root).visible_parquet_files()
