"""Configuration of the HTTP endpoint (``http:`` in config.yaml)."""

from __future__ import annotations

import ipaddress
from typing import Optional

from pydantic import Field, model_validator

from edgedet.model.config import Strict


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1); anything else reaches other machines."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


class HttpConfig(Strict):
    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = Field(default=8321, ge=1, le=65535)
    # Required when bind is not loopback; clients send "Authorization: Bearer <token>" (a browser: ?token=).
    token: Optional[str] = None

    @model_validator(mode="after")
    def _token_off_loopback(self) -> HttpConfig:
        if self.enabled and not is_loopback(self.bind) and not self.token:
            raise ValueError(f"http.bind {self.bind} is reachable from other machines: set http.token (a long "
                             "random string) or bind 127.0.0.1")
        return self
