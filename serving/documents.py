"""Reading configuration documents (YAML or JSON files): the edge where files
become validated, typed objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from serving.kernel.config import RampartConfig, parse_config
from serving.kernel.errors import ConfigError


def read_document(path: str | Path, noun: str, error: type[Exception]) -> Any:
    """Parse a YAML (or JSON) file; raise ``error`` with a clear message."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {noun} {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {exc}") from None


def load_config(path: str | Path) -> RampartConfig:
    """Read and validate a YAML (or JSON) config file."""
    return parse_config(read_document(path, "config", ConfigError), source=str(path))
