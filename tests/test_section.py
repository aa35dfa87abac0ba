"""The config sections' validator (edgedet/section.py): types, bounds, rules, assignment, copies and dumps."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import pytest

from edgedet.config import EdgedetConfig, build_config
from edgedet.errors import ConfigError
from edgedet.model.config import ModelConfig, PreprocessConfig
from edgedet.publish.config import MqttConfig
from edgedet.section import Check, Invalid, Range, Section, dotted


def _even(value: int) -> int:
    if value % 2:
        raise ValueError("must be even")
    return value


@dataclasses.dataclass(init=False)
class Inner(Section):
    low: float = 1.0
    high: float = 2.0

    def _check(self) -> None:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")


@dataclasses.dataclass(init=False)
class Outer(Section):
    count: Annotated[int, Range(ge=1, le=10)] = 1
    even: Annotated[int, Check(_even)] = 2
    ratio: float = 0.5
    flag: bool = False
    name: str = "x"
    where: Optional[Path] = None
    mode: Literal["a", "b"] = "a"
    level: Literal[0, 1] = 0
    either: Union[Literal["auto"], int] = "auto"
    box: Optional[tuple[float, float]] = None
    items: list[int] = dataclasses.field(default_factory=list)
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    inner: Inner = dataclasses.field(default_factory=Inner)
    entries: Optional[list[Inner]] = None


def problems(data: dict[str, object]) -> list[tuple[str, str]]:
    with pytest.raises(Invalid) as info:
        Outer.from_data(data)
    return [(dotted(p.loc), p.text) for p in info.value.problems]


def test_values_are_read_as_yaml_and_the_environment_give_them() -> None:
    built = Outer.from_data({"count": "7", "even": 4.0, "ratio": "0.25", "flag": "yes", "where": "a/b",
                             "either": 3, "box": [0, 1], "items": (1, "2"), "scores": {"cat": 1},
                             "entries": [{"low": 0}]})
    assert (built.count, built.even, built.ratio, built.flag, built.where, built.either) == \
        (7, 4, 0.25, True, Path("a/b"), 3)
    assert (built.box, built.items, built.scores, built.entries) == ((0.0, 1.0), [1, 2], {"cat": 1.0}, [Inner(low=0)])


@pytest.mark.parametrize(("data", "expected"), [
    ({"count": True}, ("count", "must be a valid integer")),  # `true` is a mistake, not 1
    ({"count": 2.5}, ("count", "must be a valid integer")),
    ({"count": 11}, ("count", "must be less than or equal to 10")),
    ({"even": 3}, ("even", "must be even")),
    ({"ratio": "half"}, ("ratio", "must be a valid number")),
    ({"flag": "maybe"}, ("flag", "must be a valid boolean")),
    ({"name": 5}, ("name", "must be a valid string")),
    ({"where": 5}, ("where", "must be a file path (a string)")),
    ({"mode": "c"}, ("mode", "must be 'a' or 'b'")),
    ({"level": "1"}, ("level", "must be 0 or 1")),  # a literal's type counts: "1" is not 1
    ({"either": "many"}, ("either", "must be 'auto' or a valid integer")),
    ({"box": [1, 2, 3]}, ("box", "must be a list of 2 numbers")),
    ({"items": [1, "x"]}, ("items[1]", "must be a valid integer")),
    ({"scores": {"cat": "high"}}, ("scores.cat", "must be a valid number")),
    ({"inner": [1]}, ("inner", "must be a section (a mapping of keys)")),
    ({"entries": [{"lo": 1}]}, ("entries[0].lo", "unknown key")),
    ({"inner": {"low": 5, "high": 1}}, ("inner", "high (1.0) must be >= low (5.0)")),
])
def test_each_wrong_value_names_its_key_and_the_expected_form(data: dict[str, object],
                                                             expected: tuple[str, str]) -> None:
    assert problems(data) == [expected]


def test_every_problem_is_listed_fields_first_then_unknown_keys() -> None:
    assert problems({"zzz": 1, "count": 0, "inner": {"low": "x"}}) == [
        ("count", "must be greater than or equal to 1"), ("inner.low", "must be a valid number"),
        ("zzz", "unknown key")]


def test_a_section_rule_names_its_values_without_dumping_the_section() -> None:
    """A rule across keys (like mqtt's reconnect_max_s >= reconnect_min_s) reports on its section."""
    from edgedet.config import _describe

    with pytest.raises(Invalid) as info:
        Outer.from_data({"inner": {"low": 5, "high": 1}})
    assert _describe(info.value.problems) == "inner: high (1.0) must be >= low (5.0)"


def test_the_section_rule_runs_only_on_valid_values() -> None:
    assert problems({"inner": {"low": "x", "high": 1}}) == [("inner.low", "must be a valid number")]


def test_a_required_key_left_out_is_named() -> None:
    with pytest.raises(ConfigError, match=r"f\.yaml: publish\.consensus\.of: is required; "):
        build_config({"publish": {"mode": "on_change", "consensus": {"frames": 3}}}, "f.yaml")


def test_assignment_is_checked_and_a_refused_value_is_not_kept() -> None:
    mqtt = MqttConfig()
    mqtt.port = "8883"  # type: ignore[assignment]
    assert mqtt.port == 8883
    with pytest.raises(Invalid, match="port: must be less than or equal to 65535"):
        mqtt.port = 70000
    assert mqtt.port == 8883
    # The section's rule runs again, and the old value stays when it refuses the new one.
    with pytest.raises(Invalid, match=r"reconnect_max_s .* must be >= reconnect_min_s"):
        mqtt.reconnect_min_s = 100.0
    assert mqtt.reconnect_min_s == 1.0
    with pytest.raises(AttributeError, match="MqttConfig has no field 'prot'"):
        mqtt.prot = 1  # type: ignore[attr-defined]


def test_fields_set_are_what_was_given_or_assigned() -> None:
    config = build_config({"mqtt": {"host": "b"}}, "f")
    assert config.fields_set == {"mqtt"} and config.mqtt.fields_set == {"host"}
    config.mqtt.port = 1884
    assert config.mqtt.fields_set == {"host", "port"}


def test_replace_checks_the_changes_and_keeps_what_was_set() -> None:
    config = build_config({"models": [{"name": "a"}]}, "f")
    copy = config.replace(device_id="other")
    assert copy.device_id == "other" and copy.models == config.models and config.device_id is None
    assert copy.fields_set == {"models", "device_id"}  # "model" stays unset: models: alone is still valid
    with pytest.raises(Invalid, match="top_k: must be greater than or equal to 1"):
        ModelConfig().replace(top_k=0)


def test_as_dict_nests_and_json_gives_plain_types() -> None:
    model = ModelConfig(path="m.tflite", preprocess=PreprocessConfig(roi=[0, 0, 0.5, 1]))
    assert model.as_dict()["preprocess"]["roi"] == (0.0, 0.0, 0.5, 1.0)
    assert model.as_dict()["path"] == Path("m.tflite")
    data = model.as_dict(json=True)
    assert data["path"] == "m.tflite" and data["preprocess"]["roi"] == [0.0, 0.0, 0.5, 1.0]
    assert ModelConfig.from_data(data) == model  # what it dumps, it reads back


def test_sections_compare_by_value() -> None:
    assert EdgedetConfig() == EdgedetConfig() and MqttConfig(port=1) != MqttConfig(port=2)


def test_replace_takes_the_other_values_as_they_are() -> None:
    """The one model: runs as a classifier named "" (no valid models: name): a copy of it with another model file
    checks the new file's path, not the name."""
    single = EdgedetConfig().classifiers()[0]
    copy = single.replace(path="other.tflite", fallback="fail")
    assert (copy.name, copy.path, copy.fallback, single.fallback) == ("", Path("other.tflite"), "fail", "cpu")
    with pytest.raises(Invalid, match="fallback: must be 'cpu' or 'fail'"):
        single.replace(fallback="never")
