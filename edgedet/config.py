"""The whole configuration: loading, ``${VAR}`` expansion, ``--set`` overrides and validation.

Each section's class lives beside the thing it configures (``model/config.py``, ``frames/config.py``,
``publish/config.py``); this module composes them and turns every problem into one ``ConfigError`` line
that names the file, the key path and the expected form.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, Field, ValidationError

from edgedet.errors import ConfigError
from edgedet.frames.config import SourceConfig
from edgedet.model.config import ModelConfig, Strict
from edgedet.publish.config import HomeAssistantConfig, MqttConfig, PublishConfig

CONFIG_ENV = "EDGEDET_CONFIG"
SYSTEM_CONFIG = Path("/etc/edgedet/config.yaml")


class LoopConfig(Strict):
    max_fps: float = Field(default=0.0, ge=0)  # 0 = no throttle
    max_frames: int = Field(default=0, ge=0)  # 0 = unbounded
    duration_s: float = Field(default=0.0, ge=0)  # 0 = unbounded


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "plain", "json"] = "auto"


class EdgedetConfig(Strict):
    device_id: Optional[str] = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    def resolved_device_id(self) -> str:
        """The device id reduced to ``[a-zA-Z0-9_-]`` (it becomes an MQTT topic level)."""
        raw = self.device_id or socket.gethostname()
        return re.sub(r"[^a-zA-Z0-9_-]", "_", raw) or "edgedet"


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(node: Any, path: str, source: str) -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string; an unset variable is an error."""
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k), source) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{path}[{i}]", source) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{path}: environment variable ${{{name}}} is not set",
                where=source,
                fix=f"export {name}=... or write ${{{name}:-default}}",
            )

        expanded = _VAR.sub(repl, node)
        # A value that was only a variable takes the YAML type of what it expands to (a port stays a number).
        if _VAR.fullmatch(node):
            try:
                return yaml.safe_load(expanded) if expanded else expanded
            except yaml.YAMLError:
                return expanded
        return expanded
    return node


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value", fix="e.g. --set model.top_k=5")
    key, _, raw = text.partition("=")
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set {text!r}: empty key", fix="e.g. --set model.top_k=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return keys, value


def _apply_override(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {}
            node[k] = child
        node = child
    node[keys[-1]] = value


def find_config_file(explicit: str | Path | None) -> Path | None:
    """Search order: ``--config``, ``$EDGEDET_CONFIG``, /etc/edgedet/config.yaml, ./config.yaml."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    for candidate in (SYSTEM_CONFIG, Path("config.yaml")):
        if candidate.is_file():
            return candidate
    return None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", where=path, fix="check the path or pass --config") from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", where=path, fix="pass the YAML file") from None
    except PermissionError:
        raise ConfigError("cannot read the config file (permission denied)", where=path,
                          fix="make it readable by the service user") from None
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8 text", where=path, fix="save the file as UTF-8 YAML") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"YAML syntax error: {problem}", where=f"{path}{at}",
                          fix="fix the YAML at that line and column") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of sections (model:, source:, ...)", where=path)
    return data


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    loc = [str(p) for p in error["loc"]]
    # Drop pydantic's union-branch names ("int", "literal['auto']") from the path.
    loc = [p for p in loc if not (p.startswith("literal[") or p in {"int", "float", "str", "list[float]"})]
    dotted = ".".join(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        parent: Any = model
        for part in loc[:-1]:
            field = parent.model_fields.get(part) if isinstance(parent, type) else None
            parent = field.annotation if field is not None else None
        known = list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.5)
        hint = f"; did you mean '{'.'.join([*loc[:-1], close[0]])}'?" if close else ""
        allowed = f" (known keys: {', '.join(known)})" if known and not close else ""
        return f"{dotted}: unknown key{hint}{allowed}"
    got = error.get("input")
    return f"{dotted}: {error['msg'].lower()}, got {got!r}"


def build_config(data: dict[str, Any], source: str) -> EdgedetConfig:
    data = _expand_env(data, "", source)
    try:
        return EdgedetConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = _describe(errors[0], EdgedetConfig)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{first}{more}", where=source, fix="see config.yaml for every key") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                *, search: bool = True) -> tuple[EdgedetConfig, Path | None]:
    """Load, expand, override and validate. Returns the config and the file it came from (or None)."""
    found = find_config_file(path) if search or path else None
    data = read_yaml(found) if found else {}
    for text in overrides or []:
        keys, value = parse_override(text)
        _apply_override(data, keys, value)
    base = found.parent if found else Path.cwd()
    config = build_config(data, str(found) if found else "--set")
    _resolve_relative_paths(config, base)
    return config, found


def _resolve_relative_paths(config: EdgedetConfig, base: Path) -> None:
    """Paths in a config file are relative to that file, so a unit's WorkingDirectory does not matter."""
    for section, key in (("model", "path"), ("model", "labels"), ("model", "cpu_model")):
        obj = getattr(config, section)
        value = getattr(obj, key)
        if value is not None and not Path(value).is_absolute():
            setattr(obj, key, (base / value))
