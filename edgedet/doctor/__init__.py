"""``edgedet doctor``: the whole chain checked on this box in seconds, each problem with its fix.

One module per check group (platform, runtimes, model, edgetpu, camera, mqtt, service); each exposes
``check(ctx) -> list[Item]``. Nothing here disturbs a running service: a camera or Edge TPU the service
holds is never opened (the item says so instead), and the MQTT probe uses its own client id.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from edgedet.config import EdgedetConfig

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Item:
    group: str
    name: str
    status: Status
    fact: str  # what was measured
    fix: str = ""  # what to do about it (empty when ok)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    config: EdgedetConfig
    config_path: Optional[Path]
    service: list[str] = field(default_factory=list)  # how a running service was seen (empty: none)
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def service_running(self) -> bool:
        return bool(self.service)
