"""The forcing header's signing key, read from the environment when the
gateway starts (the I/O shell of :mod:`serving.routing.forcing`).

The config names the variable (``requests.forced_assignment.signing_key_env``),
never the key: a config is shown and committed, a key is not. A variable named
but unset, empty or too short refuses the start: a gateway that silently
accepted no signed values would turn every tester's signed request into a 403
with no hint why.
"""

from __future__ import annotations

from collections.abc import Mapping

from serving.kernel.config import RampartConfig
from serving.kernel.errors import ConfigError
from serving.kernel.forcing import MIN_SIGNING_KEY_BYTES


def forcing_signing_key(config: RampartConfig, environ: Mapping[str, str]) -> str | None:
    """The signing key the config names, from ``environ``; None when forcing is
    off or takes no signed values. :class:`ConfigError` (one line, without the
    key) when the variable is unset or shorter than the minimum."""
    forcing = config.requests.forced_assignment
    if forcing is None or forcing.signing_key_env is None:
        return None
    name = forcing.signing_key_env
    key = environ.get(name, "")
    where = f"requests.forced_assignment.signing_key_env names {name}"
    if not key:
        raise ConfigError(f"{where}, which is not set: set it to the signing key (at least "
                          f"{MIN_SIGNING_KEY_BYTES} bytes) or remove signing_key_env")
    size = len(key.encode())
    if size < MIN_SIGNING_KEY_BYTES:
        raise ConfigError(f"{where}, which holds {size} bytes: a signing key needs at least "
                          f"{MIN_SIGNING_KEY_BYTES} (e.g. `openssl rand -hex 32`)")
    return key
