"""Configuration of the HTTP endpoint (``http:`` in config.yaml)."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Annotated, Optional

from edgedet.section import Range, Section


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1); anything else reaches other machines."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


@dataclasses.dataclass(init=False)
class HttpConfig(Section):
    enabled: bool = False
    bind: str = "127.0.0.1"
    port: Annotated[int, Range(ge=1, le=65535)] = 8321
    # Required when bind is not loopback; clients send "Authorization: Bearer <token>" (a browser: ?token=).
    token: Optional[str] = None

    def _check(self) -> None:
        if self.enabled and not is_loopback(self.bind) and not self.token:
            raise ValueError(f"http.bind {self.bind} is reachable from other machines: set http.token (a long "
                             "random string) or bind 127.0.0.1")
