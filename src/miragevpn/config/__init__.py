"""OpenVPN client configuration: `parse_config`, `format_config` and the model (`Config`)."""

from __future__ import annotations

from .format import format_config
from .model import Config
from .parse import parse_config

__all__ = ["Config", "format_config", "parse_config"]
