"""The fake picamera2 and edgedet's calls against the REAL picamera2 source (its wheel, read with ``ast``).

The wheel is fetched once by ``scripts/test`` into ``.cache/wheels`` (``EDGEDET_PICAMERA2_WHEEL`` names it);
nothing is imported from it (it needs libcamera and a Pi) and nothing is downloaded here.
Checked: every method and class attribute the fake defines with a public name (or a private one the real
class also has) exists in the real class with the same kind (method, staticmethod, property, attribute),
its positional parameters in the same order and its keyword-only ones as keyword-only; every call edgedet
makes on a picamera2 object passes arguments the real method accepts, by position or by keyword as it does.
"""

from __future__ import annotations

import ast
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "fakes" / "picamera2"
EDGEDET_SOURCE = REPO / "edgedet" / "frames" / "picamera2.py"
# The modules of the real package that the fake stands in for.
MODULES = ("picamera2.py", "request.py", "platform.py")


def _wheel() -> Path:
    named = os.environ.get("EDGEDET_PICAMERA2_WHEEL")
    candidates = [Path(named)] if named else sorted((REPO / ".cache" / "wheels").glob("picamera2-*.whl"))
    for path in candidates:
        if path.is_file():
            return path
    pytest.skip("the picamera2 wheel is not cached (scripts/test downloads it into .cache/wheels; "
                "or set EDGEDET_PICAMERA2_WHEEL): cannot compare the fake with the real source")


@dataclass
class Method:
    kind: str  # method | staticmethod | classmethod | property
    positional: list[str]  # without self/cls
    keyword_only: list[str]
    var_positional: bool
    var_keyword: bool

    def describe(self) -> str:
        params = [*self.positional, *(["*"] if self.keyword_only and not self.var_positional else []),
                  *(["*args"] if self.var_positional else []), *self.keyword_only,
                  *(["**kwargs"] if self.var_keyword else [])]
        return f"{self.kind}({', '.join(params)})"


@dataclass
class ClassApi:
    methods: dict[str, Method] = field(default_factory=dict)
    attributes: set[str] = field(default_factory=set)


@dataclass
class ModuleApi:
    classes: dict[str, ClassApi] = field(default_factory=dict)
    functions: dict[str, Method] = field(default_factory=dict)


def _method(node: ast.FunctionDef) -> Method | None:
    decorators = {ast.unparse(d) for d in node.decorator_list}
    if "overload" in decorators or "typing.overload" in decorators:
        return None  # the implementation that follows the overloads is the signature that counts
    if "staticmethod" in decorators:
        kind = "staticmethod"
    elif "classmethod" in decorators:
        kind = "classmethod"
    elif decorators & {"property", "classproperty"} or any(d.endswith((".setter", ".deleter")) for d in decorators):
        kind = "property"
    else:
        kind = "method"
    args = node.args
    positional = [a.arg for a in [*args.posonlyargs, *args.args]]
    if kind in ("method", "classmethod", "property") and positional:
        positional = positional[1:]
    return Method(kind, positional, [a.arg for a in args.kwonlyargs], args.vararg is not None,
                  args.kwarg is not None)


def parse_module(source: str) -> ModuleApi:
    api = ModuleApi()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            cls = api.classes.setdefault(node.name, ClassApi())
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    method = _method(item)
                    if method is not None and not (item.name in cls.methods and method.kind == "property"):
                        cls.methods[item.name] = method
                elif isinstance(item, ast.Assign):
                    cls.attributes.update(t.id for t in item.targets if isinstance(t, ast.Name))
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    cls.attributes.add(item.target.id)
        elif isinstance(node, ast.FunctionDef):
            method = _method(node)
            if method is not None:
                api.functions[node.name] = method
    return api


def real_api(wheel: Path) -> dict[str, ModuleApi]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: parse_module(archive.read(f"picamera2/{name}").decode()) for name in MODULES}


def _checked(name: str) -> bool:
    """Public names, dunders, and private names only when the real class has them too (checked below)."""
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def compare_fake(fake: dict[str, ModuleApi], real: dict[str, ModuleApi]) -> list[str]:
    """Every difference between the fake's definitions and the real ones, one line each."""
    problems = []
    for module, fake_module in fake.items():
        real_module = real[module]
        for name, fake_fn in fake_module.functions.items():
            real_fn = real_module.functions.get(name)
            if real_fn is None:
                if _checked(name):
                    problems.append(f"picamera2/{module}: function {name} does not exist in the real module")
                continue
            problems += _compare_signature(f"picamera2/{module}: {name}", fake_fn, real_fn)
        for class_name, fake_class in fake_module.classes.items():
            real_class = real_module.classes.get(class_name)
            where = f"picamera2/{module}: {class_name}"
            if real_class is None:
                if _checked(class_name):
                    problems.append(f"{where}: the real module has no class {class_name}")
                continue
            for name, fake_method in fake_class.methods.items():
                real_method = real_class.methods.get(name)
                if real_method is None:
                    if name in real_class.attributes:
                        problems.append(f"{where}.{name}: a {fake_method.kind} in the fake, a plain class "
                                        "attribute in the real class")
                    elif _checked(name):
                        problems.append(f"{where}.{name}: the real class has no such method or property")
                    continue
                problems += _compare_signature(f"{where}.{name}", fake_method, real_method)
            for name in sorted(fake_class.attributes):
                if name in real_class.attributes or not _checked(name):
                    continue
                problems.append(f"{where}.{name}: the real class has no such class attribute")
    return problems


def _compare_signature(where: str, fake: Method, real: Method) -> list[str]:
    problems = []
    if fake.kind != real.kind:
        return [f"{where}: a {fake.kind} in the fake, a {real.kind} in the real one {real.describe()}"]
    if fake.kind == "property":
        return []
    if fake.positional != real.positional[:len(fake.positional)]:
        problems.append(f"{where}: positional parameters {fake.positional} are not the real ones in order "
                        f"(real {real.describe()})")
    for name in fake.keyword_only:
        if name not in real.keyword_only and not real.var_keyword:
            problems.append(f"{where}: keyword-only parameter {name!r} is not keyword-only in the real one "
                            f"{real.describe()}")
    if fake.var_positional and not real.var_positional:
        problems.append(f"{where}: takes *args, the real one does not {real.describe()}")
    if fake.var_keyword and not real.var_keyword:
        problems.append(f"{where}: takes **kwargs, the real one does not {real.describe()}")
    return problems


def fake_api() -> dict[str, ModuleApi]:
    return {name: parse_module((FAKE / name).read_text()) for name in MODULES}


# What the receivers in edgedet/frames/picamera2.py are: the class itself, a Picamera2, a CompletedRequest.
RECEIVERS = {"Picamera2": ("Picamera2", "class"), "camera": ("Picamera2", "instance"),
             "self.camera": ("Picamera2", "instance"), "request": ("CompletedRequest", "instance")}
# At least these must be found, so the check cannot pass by finding nothing (e.g. after a rename).
EXPECTED_CALLS = {("Picamera2", "global_camera_info"), ("Picamera2", "__init__"),
                  ("Picamera2", "create_video_configuration"), ("Picamera2", "configure"),
                  ("Picamera2", "camera_configuration"), ("Picamera2", "start"), ("Picamera2", "stop"),
                  ("Picamera2", "close"), ("Picamera2", "capture_request"), ("CompletedRequest", "make_array"),
                  ("CompletedRequest", "get_metadata"), ("CompletedRequest", "release"), ("Picamera2", "platform")}


def edgedet_uses(source: str) -> list[tuple[str, str, int, list[str], bool, int]]:
    """(class, member, positional count, keyword names, called, line) for each use on a picamera2 object."""
    uses = []
    called_nodes = set()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        keywords = [k.arg for k in node.keywords if k.arg is not None]
        if isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) >= 2 and \
                ast.unparse(node.args[0]) in RECEIVERS and isinstance(node.args[1], ast.Constant):
            cls, _ = RECEIVERS[ast.unparse(node.args[0])]
            uses.append((cls, str(node.args[1].value), 0, [], False, node.lineno))
        elif isinstance(node.func, ast.Name) and node.func.id == "Picamera2":
            uses.append(("Picamera2", "__init__", len(node.args), keywords, True, node.lineno))
        elif isinstance(node.func, ast.Attribute) and ast.unparse(node.func.value) in RECEIVERS:
            called_nodes.add(id(node.func))
            cls, _ = RECEIVERS[ast.unparse(node.func.value)]
            uses.append((cls, node.func.attr, len(node.args), keywords, True, node.lineno))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in called_nodes and \
                ast.unparse(node.value) in RECEIVERS and isinstance(node.ctx, ast.Load):
            cls, _ = RECEIVERS[ast.unparse(node.value)]
            uses.append((cls, node.attr, 0, [], False, node.lineno))
    return uses


def check_edgedet_uses(uses: list[tuple[str, str, int, list[str], bool, int]],
                       real: dict[str, ModuleApi]) -> list[str]:
    classes = {name: cls for module in real.values() for name, cls in module.classes.items()}
    problems = []
    for cls_name, member, n_positional, keywords, called, line in uses:
        where = f"edgedet/frames/picamera2.py:{line}: {cls_name}.{member}"
        cls = classes[cls_name]
        method = cls.methods.get(member)
        if method is None:
            if member in cls.attributes and not called:
                continue
            problems.append(f"{where}: the real {cls_name} has no such member")
            continue
        if not called:
            if method.kind != "property":
                problems.append(f"{where}: read as an attribute, but it is a {method.kind} in the real class")
            continue
        if method.kind == "property":
            problems.append(f"{where}: called, but it is a property in the real class")
            continue
        if n_positional > len(method.positional) and not method.var_positional:
            problems.append(f"{where}: {n_positional} positional arguments, the real one takes "
                            f"{method.describe()}")
        for keyword in keywords:
            if keyword not in method.positional + method.keyword_only and not method.var_keyword:
                problems.append(f"{where}: keyword {keyword!r} is not a parameter of the real {method.describe()}")
    return problems


def test_the_fake_defines_only_what_the_real_picamera2_has_with_the_same_signatures():
    real = real_api(_wheel())
    fake = fake_api()
    problems = compare_fake(fake, real)
    assert not problems, "the fake picamera2 differs from the real source:\n" + "\n".join(problems)
    # Sanity: the comparison saw the classes and methods the tests drive.
    assert {"capture_request", "create_video_configuration", "configure"} <= set(fake["picamera2.py"]
                                                                                 .classes["Picamera2"].methods)
    assert {"make_array", "release"} <= set(fake["request.py"].classes["CompletedRequest"].methods)


def test_every_picamera2_call_edgedet_makes_exists_in_the_real_source_with_those_arguments():
    real = real_api(_wheel())
    uses = edgedet_uses(EDGEDET_SOURCE.read_text())
    missing = EXPECTED_CALLS - {(cls, member) for cls, member, *_ in uses}
    assert not missing, f"edgedet's picamera2 calls were not found (receivers renamed?): {sorted(missing)}"
    problems = check_edgedet_uses(uses, real)
    assert not problems, "edgedet calls picamera2 in ways the real source does not accept:\n" + "\n".join(problems)


def test_the_checks_catch_a_method_or_argument_the_real_picamera2_lacks():
    real = real_api(_wheel())
    bad_fake = fake_api()
    bad_fake["picamera2.py"] = parse_module(
        "class Picamera2:\n"
        "    def capture_request(self, wait=None, timeout=None): ...\n"
        "    def capture_frame(self): ...\n"
        "    def configure(self, *, camera_config=None): ...\n"
        "    @property\n"
        "    def camera_configuration(self): ...\n")
    problems = compare_fake(bad_fake, real)
    assert any("capture_request: positional parameters ['wait', 'timeout']" in p for p in problems), problems
    assert any("capture_frame: the real class has no such method" in p for p in problems), problems
    assert any("configure: keyword-only parameter 'camera_config'" in p for p in problems), problems
    assert any("camera_configuration: a property in the fake, a method" in p for p in problems), problems
    uses = edgedet_uses("camera.capture_request(wait=1.0, timeout=2)\nrequest.make_array('lores', 'x')\n"
                        "camera.sensor_modes()\n")
    problems = check_edgedet_uses(uses, real)
    assert len(problems) == 3, problems
    assert "keyword 'timeout' is not a parameter" in problems[0]
    assert "2 positional arguments" in problems[1] and "called, but it is a property" in problems[2]
