"""The whole configuration: loading, ``${VAR}`` expansion, ``--set`` overrides and validation.

Each section's class lives beside the thing it configures (``model/config.py``, ``frames/config.py``,
``publish/config.py``); this module composes them and turns every problem into one ``ConfigError`` line
that names the file, the key path and the expected form.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml

from edgedet.errors import ConfigError
from edgedet.frames.config import SourceConfig
from edgedet.http.config import HttpConfig
from edgedet.model.config import ModelConfig, default_model_path
from edgedet.publish.config import ConsensusConfig, HomeAssistantConfig, MqttConfig, PublishConfig, Threshold
from edgedet.section import Check, Invalid, Problem, Range, Section, dotted, field_types, section_type

CONFIG_ENV = "EDGEDET_CONFIG"
SYSTEM_CONFIG = Path("/etc/edgedet/config.yaml")


@dataclasses.dataclass(init=False)
class LoopConfig(Section):
    max_fps: Annotated[float, Range(ge=0)] = 0.0  # 0 = no throttle
    max_frames: Annotated[int, Range(ge=0)] = 0  # 0 = unbounded
    duration_s: Annotated[float, Range(ge=0)] = 0.0  # 0 = unbounded


@dataclasses.dataclass(init=False)
class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "plain", "json"] = "auto"


_NOT_TOPIC_LEVEL = re.compile(r"[^a-zA-Z0-9_-]")


def clean_device_id(raw: str) -> str:
    """Reduce an id to ``[a-zA-Z0-9_-]``: it becomes one MQTT topic level, where ``+ # /`` would break."""
    return _NOT_TOPIC_LEVEL.sub("_", raw) or "edgedet"


# What a classifier of ``models:`` may set of ``publish:`` for itself (unset: the ``publish:`` section's value).
CLASSIFIER_PUBLISH_KEYS = ("mode", "min_score", "debounce_frames", "thresholds", "consensus", "republish_s")


@dataclasses.dataclass(init=False)
class ClassifierPublishConfig(Section):
    mode: Optional[Literal["every_frame", "on_change"]] = None
    min_score: Optional[Annotated[float, Range(ge=0.0, le=1.0)]] = None
    debounce_frames: Optional[Annotated[int, Range(ge=1)]] = None
    thresholds: Optional[dict[str, float]] = None
    consensus: Optional[ConsensusConfig] = None
    republish_s: Optional[Annotated[float, Range(ge=0)]] = None


def _topic_level(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise ValueError("must be 1 to 64 characters of A-Z a-z 0-9 _ - (it becomes an MQTT topic level), "
                         "e.g. door")
    return value


@dataclasses.dataclass(init=False)
class ClassifierConfig(ModelConfig):
    """One entry of ``models:``: a model section plus its name, its schedule and its own publishing."""

    # Required, after the model fields' defaults: the section builds itself (init=False), so order is free.
    name: Annotated[str, Check(_topic_level)]  # type: ignore[misc]
    # Classify every n-th frame the camera delivers (1 = every frame) and at most once per interval_s.
    every_n_frames: Annotated[int, Range(ge=1)] = 1
    interval_s: Annotated[float, Range(ge=0)] = 0.0
    publish: ClassifierPublishConfig = dataclasses.field(default_factory=ClassifierPublishConfig)
    # Home Assistant binary sensors of this classifier (label: threshold), as homeassistant.binary_sensors.
    binary_sensors: dict[str, Threshold] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(init=False)
class EdgedetConfig(Section):
    device_id: Optional[str] = None  # Optional, not `|`: evaluated at run time, also on Python 3.9
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    # Several named classifiers on the one camera, each on its own region; None = the one ``model:``.
    models: Optional[list[ClassifierConfig]] = None
    source: SourceConfig = dataclasses.field(default_factory=SourceConfig)
    loop: LoopConfig = dataclasses.field(default_factory=LoopConfig)
    publish: PublishConfig = dataclasses.field(default_factory=PublishConfig)
    mqtt: MqttConfig = dataclasses.field(default_factory=MqttConfig)
    homeassistant: HomeAssistantConfig = dataclasses.field(default_factory=HomeAssistantConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    http: HttpConfig = dataclasses.field(default_factory=HttpConfig)

    def resolved_device_id(self) -> str:
        """``device_id``, else the host name, through ``clean_device_id``."""
        return clean_device_id(self.device_id or socket.gethostname())

    def _check(self) -> None:
        if self.models is None:
            return
        if "model" in self.fields_set:
            raise ValueError("set model: (one classifier) or models: (a list of named classifiers), not both")
        if not self.models:
            raise ValueError("models: must list at least one classifier (or leave it out and use model:)")
        names = [entry.name for entry in self.models]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"models: the name {twice[0]!r} is given twice; each classifier needs its own name")
        if self.homeassistant.binary_sensors and len(self.models) > 1:
            raise ValueError("homeassistant.binary_sensors: with several classifiers, set binary_sensors in "
                             "each models: entry instead")
        for index, entry in enumerate(self.models):
            try:
                self.publish_for(entry)
            except Invalid as exc:
                where = dotted(exc.problems[0].loc)
                raise ValueError(f"models[{index}].publish{'.' + where if where else ''}: "
                                 f"{exc.problems[0].text}") from None

    def classifiers(self) -> list[ClassifierConfig]:
        """Every classifier to run, in order: ``models:``, or the one ``model:`` (name "", topics as ever)."""
        if self.models is not None:
            return list(self.models)
        # Unchecked: the name "" is no valid models: entry's name; the values are the checked model: section's.
        single = ClassifierConfig.construct(**self.model.values(), name="", every_n_frames=1, interval_s=0.0,
                                            publish=ClassifierPublishConfig(),
                                            binary_sensors=dict(self.homeassistant.binary_sensors))
        return [single]

    def classifier(self, name: str) -> ClassifierConfig:
        """The classifier called ``name`` ("" or the only one's name: the only one)."""
        entries = self.classifiers()
        for entry in entries:
            if entry.name == name:
                return entry
        if len(entries) == 1 and not name:
            return entries[0]
        known = ", ".join(e.name for e in entries if e.name) or "(one classifier, model:)"
        raise ConfigError(f"no classifier named {name!r} in models:", fix=f"use one of {known}")

    def select_classifier(self, name: Optional[str], *, option: str, purpose: str,
                          where: Optional[Path] = None) -> tuple[str, ClassifierConfig]:
        """The classifier a command works on, with its key in the file ("model" or "models[i]"): the one
        ``name`` gives (passed as ``option``), else the only one. With several and no name, or a name without a
        ``models:`` list: one ConfigError that says which names there are (``purpose``: what the name is for)."""
        if self.models is None:
            if name is not None:
                raise ConfigError(f"{option} {name}: the config has no models: list (one model:)", where=where,
                                  fix=f"leave out {option}")
            return "model", self.classifiers()[0]
        if name is None:
            if len(self.models) > 1:
                names = ", ".join(e.name for e in self.models)
                raise ConfigError(f"the config runs {len(self.models)} classifiers (models:); {purpose}",
                                  where=where, fix=f"pass {option} NAME, one of {names}")
            name = self.models[0].name
        entry = self.classifier(name)
        return f"models[{self.models.index(entry)}]", entry

    def publish_for(self, entry: ClassifierConfig) -> PublishConfig:
        """``publish:`` with what the classifier sets for itself in place (validated as ``publish:`` is)."""
        own = {key: getattr(entry.publish, key) for key in CLASSIFIER_PUBLISH_KEYS
               if getattr(entry.publish, key) is not None}
        if not own:
            return self.publish
        return PublishConfig.from_data({**self.publish.values(), **own})


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping; every failure is one ConfigError naming the file (and line:column)."""
    denied = ConfigError("cannot read the config file (permission denied)", where=path,
                         fix="make it readable by the service user")
    try:
        if path.is_symlink() and not path.exists():
            raise ConfigError(f"is a broken symbolic link (points to {os.readlink(path)})", where=path,
                              fix="point it at an existing config file or pass --config")
        if path.exists() and not path.is_file() and not path.is_dir():
            # Reading a FIFO or a device would block or never end: refuse anything but a regular file.
            raise ConfigError("is not a regular file (a pipe, socket or device)", where=path,
                              fix="pass a regular YAML file")
    except PermissionError:  # a parent folder the service user may not enter
        raise denied from None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", where=path,
                          fix="check the path or pass --config") from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", where=path, fix="pass the YAML file") from None
    except PermissionError:
        raise denied from None
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8 text", where=path, fix="save the file as UTF-8 YAML") from None
    return parse_yaml(text, path)


def parse_yaml(text: str, path: Path) -> dict[str, Any]:
    """A config file's text as the daemon reads it (one mapping, no key twice); ConfigError naming ``path``."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
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


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys of the section at ``loc`` (list indexes step into a list's entries)."""
    section: Optional[type[Section]] = EdgedetConfig
    for part in loc:
        if isinstance(part, int) or section is None:
            continue
        hint = field_types(section).get(part)
        section = section_type(hint) if hint is not None else None
    return list(field_types(section)) if section is not None else []


def _describe(problems: list[Problem]) -> str:
    """One line for the first wrong key, with "did you mean" for a key that is close to a known one."""
    first = problems[0]
    where = dotted(first.loc)
    if first.kind == "unknown":
        import difflib  # here, not at the top: only a wrong config needs it

        known = _known_keys(first.loc[:-1])
        close = difflib.get_close_matches(str(first.loc[-1]), known, n=1, cutoff=0.5)
        hint = f"; did you mean '{dotted((*first.loc[:-1], close[0]))}'?" if close else ""
        allowed = f" (known keys: {', '.join(known)})" if known and not close else ""
        return f"{where}: unknown key{hint}{allowed}"
    if first.kind in ("rule", "missing"):
        # A rule across keys of one section (e.g. reconnect_max_s >= reconnect_min_s) names its values; a
        # rule across sections names its keys itself.
        return f"{where}: {first.text}" if where else first.text
    got = repr(first.value)
    if len(got) > 60:
        got = got[:57] + "..."
    return f"{where}: {first.text}, got {got}"


def build_config(data: dict[str, Any], source: str) -> EdgedetConfig:
    data = _expand_env(data, "", source)
    try:
        return EdgedetConfig.from_data(data)
    except Invalid as exc:
        other_keys = {dotted(p.loc) for p in exc.problems} - {dotted(exc.problems[0].loc)}
        more = f" (and {len(other_keys)} more)" if other_keys else ""
        raise ConfigError(f"{_describe(exc.problems)}{more}", where=source,
                          fix="see config.yaml for every key") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                *, search: bool = True, check_files: bool = True) -> tuple[EdgedetConfig, Path | None]:
    """Load, expand, override and validate. Returns the config and the file it came from (or None).

    With ``check_files`` (the default) every file the config names must exist now: a missing model is a
    start-time error naming the key and the path, not a failure minutes later in the frame loop; that
    includes ``mqtt.password_file`` having a password on its first line (it is read again where it is used,
    through ``MqttConfig.effective_password``, and never copied into the config).
    """
    found = find_config_file(path) if search or path else None
    data = read_yaml(found) if found else {}
    for text in overrides or []:
        keys, value = parse_override(text)
        _apply_override(data, keys, value)
    base = found.parent if found else Path.cwd()
    source = str(found) if found else "--set"
    config = build_config(data, source)
    _resolve_relative_paths(config, base)
    if config.model.path is None:
        config.model.path = default_model_path()  # the embedded default: the bundled model
    for entry in config.models or []:
        if entry.path is None:
            entry.path = default_model_path()
    if check_files:
        _check_files(config, source)
    return config, found


_MODEL_PATHS = ("path", "labels", "cpu_model")
_RELATIVE_PATHS = (
    ("model", "path"), ("model", "labels"), ("model", "cpu_model"),
    ("mqtt", "password_file"), ("mqtt.tls", "ca_file"), ("mqtt.tls", "cert_file"), ("mqtt.tls", "key_file"),
)


def _section(config: EdgedetConfig, dotted: str) -> Any:
    obj: Any = config
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _resolve_relative_paths(config: EdgedetConfig, base: Path) -> None:
    """Paths in a config file are relative to that file, so a unit's WorkingDirectory does not matter."""
    pairs: list[tuple[Any, str]] = [(_section(config, section), key) for section, key in _RELATIVE_PATHS]
    pairs += [(entry, key) for entry in config.models or [] for key in _MODEL_PATHS]
    for obj, key in pairs:
        value = getattr(obj, key)
        if value is not None and not Path(value).is_absolute():
            setattr(obj, key, (base / value))


def _require_file(value: Path | None, key: str, source: str, fix: str) -> None:
    if value is None:
        return
    try:
        if value.is_symlink() and not value.exists():
            raise ConfigError(f"{key}: broken symbolic link {value}", where=source, fix=fix)
        if not value.exists():
            raise ConfigError(f"{key}: file not found: {value}", where=source, fix=fix)
        if value.is_dir():
            raise ConfigError(f"{key}: is a directory, not a file: {value}", where=source, fix=fix)
        if not value.is_file():
            raise ConfigError(f"{key}: not a regular file: {value}", where=source, fix=fix)
    except PermissionError:
        readable = False
    else:
        readable = os.access(value, os.R_OK)
    if not readable:
        raise ConfigError(f"{key}: cannot read {value} (permission denied)", where=source,
                          fix="make it readable by the service user")


def _check_files(config: EdgedetConfig, source: str) -> None:
    model_fix = "check the path (relative paths are relative to the config file)"
    sections: list[tuple[str, ModelConfig]] = [("model", config.model)] if config.models is None else [
        (f"models[{index}]", entry) for index, entry in enumerate(config.models)]
    for where, model in sections:
        for key in _MODEL_PATHS:
            _require_file(getattr(model, key), f"{where}.{key}", source, model_fix)
    if config.mqtt.tls.enabled:
        for key in ("ca_file", "cert_file", "key_file"):
            _require_file(getattr(config.mqtt.tls, key), f"mqtt.tls.{key}", source, "check the path")
    # Secrets live in their own file (mode 0600, outside the config that gets shared in bug reports).
    if config.mqtt.password_file is not None:
        _require_file(config.mqtt.password_file, "mqtt.password_file", source, "check the path")
        config.mqtt.effective_password(where=source)  # an empty or undecodable file fails now, not at connect
