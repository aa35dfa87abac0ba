"""``edgedet models install FILE``: check a model, put it in the models folder, point the config at it and
reload the running daemon.

1. The model and its sidecar are copied into a staging folder inside the models folder and loaded from
   there through ``Classifier`` (so what is checked is what gets installed); the sample images are
   classified and printed. An ``_edgetpu`` model needs the Edge TPU delegate (``model.delegate: edgetpu``
   in the config and a Coral that opens); otherwise it is refused.
2. The files are moved into place with ``os.replace`` (atomic on one file system): the sidecar first, then
   the model, so a reader never sees a new model with an old sidecar.
3. ``model.path`` is rewritten in the YAML text itself (located with PyYAML's node positions), so the rest
   of the file, comments included, stays as it was; the result is validated before it replaces the file.
4. The daemon is told to reload with SIGHUP: ``--pid PID`` or ``--pid-file F`` name the process; without
   them, when the unit that reads this config is active it is ``systemctl reload`` of that unit
   (``edgedet`` for /etc/edgedet/config.yaml, ``edgedet@NAME`` for /etc/edgedet/NAME.yaml; the units'
   ExecReload sends SIGHUP to their main process). A reload keeps the MQTT connection (see
   edgedet/pipeline.py).

Any failure before step 2 changes nothing: one line on stderr and exit 2. ``--dry-run`` checks the model
and prints what it would do.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional

import yaml

from edgedet.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from edgedet.model.config import ModelConfig

SERVICE = "edgedet"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, metavar="FILE", help="the .tflite model to install")
    p.add_argument("--sidecar", type=Path, metavar="F", help="its sidecar JSON (default: FILE with .json, if any)")
    p.add_argument("--dir", type=Path, metavar="D", help="the models folder (default: the folder of the "
                   "config's current model.path)")
    p.add_argument("--config", type=Path, metavar="F", help="the config file to point at the model (default: "
                   "the search order of run)")
    p.add_argument("--images", type=Path, metavar="DIR", help="images to classify as a check (default: the "
                   "bundled models/samples)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--pid", type=int, metavar="PID", help="the running daemon's process id (SIGHUP)")
    target.add_argument("--pid-file", type=Path, metavar="F", help="a file holding the daemon's process id")
    p.add_argument("--dry-run", action="store_true", help="check the model and show what would be done")
    p.add_argument("--as", dest="classifier", metavar="NAME",
                   help="with models: in the config, the classifier whose model this replaces (the others run on)")
    p.set_defaults(handler=main)


# ------------------------------------------------------------------------------------------ the config text


def set_model_path(text: str, value: str) -> str:
    """``text`` with ``model.path`` set to ``value``; everything else in the file is kept byte for byte."""
    scalar = json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar
    root = yaml.compose(text) if text.strip() else None
    if root is None:
        return f"{text}{'' if not text or text.endswith(chr(10)) else chr(10)}model:\n  path: {scalar}\n"
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError("the top level must be a mapping of sections", fix="fix the config file")
    for key, node in root.value:
        if key.value != "model":
            continue
        if isinstance(node, yaml.ScalarNode) and node.value in ("", "null", "~"):
            return _splice(text, node.start_mark.index, node.end_mark.index, f"\n  path: {scalar}")
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError("model: must be a section", fix="fix the config file")
        return _set_path_in(text, node, key.end_mark.index, scalar)
    sep = "" if text.endswith("\n") else "\n"
    return f"{text}{sep}model:\n  path: {scalar}\n"


def set_classifier_path(text: str, name: str, value: str) -> str:
    """``text`` with the ``path`` of the ``models:`` entry called ``name`` set to ``value``; the rest is kept."""
    scalar = json.dumps(value)
    root = yaml.compose(text) if text.strip() else None
    if isinstance(root, yaml.MappingNode):
        for key, node in root.value:
            if key.value != "models" or not isinstance(node, yaml.SequenceNode):
                continue
            for item in node.value:
                if not isinstance(item, yaml.MappingNode):
                    continue
                names = [v.value for k, v in item.value if k.value == "name" and isinstance(v, yaml.ScalarNode)]
                if names == [name]:
                    return _set_path_in(text, item, item.start_mark.index, scalar)
    raise ConfigError(f"no classifier named {name!r} under models: in the config", fix="check --as NAME")


def _set_path_in(text: str, node: yaml.MappingNode, after: int, scalar: str) -> str:
    """Set ``path`` in the mapping ``node`` (a block mapping starting after index ``after``, or a flow one)."""
    for sub_key, sub_node in node.value:
        if sub_key.value == "path":
            return _splice(text, sub_node.start_mark.index, sub_node.end_mark.index, scalar)
    if node.flow_style:
        return _splice(text, node.end_mark.index - 1, node.end_mark.index - 1,
                       f"{', ' if node.value else ''}path: {scalar}")
    first = node.value[0][0].start_mark if node.value else None
    indent = " " * (first.column if first is not None else 2)
    line_start = text.rfind("\n", 0, first.index) + 1 if first is not None else after
    if first is not None and text[line_start:first.index].strip() == "-":
        # the entry's first key shares its line with the "- ": the new key goes on the next line
        end = text.find("\n", first.index)
        end = len(text) if end < 0 else end + 1
        return _splice(text, end, end, f"{indent}path: {scalar}\n")
    return _splice(text, line_start, line_start, f"{indent}path: {scalar}\n")


def _splice(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------ checking


def _sample_images(folder: Path) -> list[tuple[Path, Optional[str]]]:
    """Images directly in ``folder`` (no label) and in its label folders."""
    if not folder.is_dir():
        raise ConfigError("not a folder of images", where=folder, fix="pass --images DIR")
    found: list[tuple[Path, Optional[str]]] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            found += [(p, entry.name) for p in sorted(entry.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            found.append((entry, None))
    return found


def check_model(model_cfg: ModelConfig, images: Optional[Path]) -> str:
    """Load the staged model through Classifier, classify the sample images, print them; returns its name."""
    from edgedet.errors import DelegateError
    from edgedet.model.classifier import Classifier
    from edgedet.model.config import default_model_path
    from edgedet.model.preprocess import load_image

    try:
        classifier = Classifier.from_config(model_cfg)
    except DelegateError as exc:
        raise ModelError(f"refused: compiled for the Edge TPU, and the Edge TPU delegate does not load ({exc})",
                         where=model_cfg.path, fix="connect the Coral and install libedgetpu1-std, or install "
                         "the CPU build of the model") from None
    bundled = default_model_path()
    folder = images if images is not None else (bundled.parent / "samples" if bundled is not None else None)
    samples = _sample_images(folder) if folder is not None and (images is not None or folder.is_dir()) else []
    print(f"checked {classifier.name}: {classifier.num_classes} classes, input {classifier.input_size[0]}x"
          f"{classifier.input_size[1]}, delegate {classifier.delegate_info['active']}, labels "
          f"{classifier.labels_source}")
    right = labelled = 0
    for path, label in samples:
        top = classifier.infer(load_image(path, model_cfg.preprocess.max_image_pixels)).top_k[0]
        mark = ""
        if label is not None:
            labelled += 1
            right += top.label == label
            mark = "  ok" if top.label == label else f"  (folder says {label})"
        print(f"  {top.label:20s} {top.score:6.3f}  {path.name}{mark}")
    if labelled:
        print(f"  {right}/{labelled} sample images classified as their folder")
    return classifier.name


# ------------------------------------------------------------------------------------------ reloading


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        raise ConfigError("cannot read a process id from the pid file", where=path,
                          fix="check the path, or pass --pid PID") from None


def service_for(config_path: Path) -> Optional[str]:
    """The systemd unit that runs this config file: ``edgedet`` for /etc/edgedet/config.yaml, ``edgedet@NAME``
    for /etc/edgedet/NAME.yaml (``scripts/install.sh --instance NAME``), None for any other file (no unit of
    ours reads it)."""
    from edgedet.config import SYSTEM_CONFIG

    path = Path(os.path.abspath(config_path))
    if path.parent != SYSTEM_CONFIG.parent or path.suffix != ".yaml":
        return None
    return SERVICE if path == SYSTEM_CONFIG else f"{SERVICE}@{path.stem}"


def _systemd_runs(unit: str) -> bool:
    if shutil.which("systemctl") is None:
        return False
    return subprocess.run(["systemctl", "is-active", "--quiet", unit], check=False,
                          capture_output=True).returncode == 0


class ReloadPlan(NamedTuple):
    """What ``models install`` will do to make the daemon read the new config."""

    text: str  # said in --dry-run and after it is done
    pid: Optional[int] = None  # send SIGHUP to this process
    unit: Optional[str] = None  # or ``systemctl reload`` this unit


def reload_plan(args: argparse.Namespace, config_path: Path) -> ReloadPlan:
    pid = args.pid if args.pid is not None else _read_pid(args.pid_file) if args.pid_file is not None else None
    if pid is not None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise ConfigError(f"no process {pid} is running", where="--pid" if args.pid else args.pid_file,
                              fix="start the daemon, or leave out --pid to reload nothing") from None
        except PermissionError:
            pass  # it exists; sending the signal will say whether we may
        return ReloadPlan(f"send SIGHUP to the daemon (pid {pid})", pid=pid)
    unit = service_for(config_path)
    if unit is None:
        return ReloadPlan(f"nothing to reload (no --pid/--pid-file, and no edgedet unit reads {config_path}): the "
                          "next start uses it")
    if _systemd_runs(unit):
        return ReloadPlan(f"systemctl reload {unit}", unit=unit)
    return ReloadPlan(f"nothing to reload (no --pid/--pid-file and {unit}.service is not active): the next start "
                      "uses it")


def _reload(plan: ReloadPlan) -> None:
    if plan.pid is not None:
        os.kill(plan.pid, signal.SIGHUP)
    elif plan.unit is not None:
        done = subprocess.run(["systemctl", "reload", plan.unit], check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"systemctl reload {plan.unit} failed: {done.stderr.strip()}",
                              fix=f"check `systemctl status {plan.unit}`; the config already names the new model")


# ------------------------------------------------------------------------------------------ install


def install(args: argparse.Namespace) -> int:
    from edgedet.config import find_config_file, load_config
    from edgedet.model.tflite_file import read_tflite

    source: Path = args.file
    if not source.is_file():
        raise ModelError("model file not found", where=source, fix="check the path")
    sidecar = args.sidecar or (source.with_suffix(".json") if source.with_suffix(".json").is_file() else None)
    if sidecar is not None and not sidecar.is_file():
        raise ModelError("sidecar file not found", where=sidecar, fix="check the path, or leave out --sidecar")
    config_path = find_config_file(args.config)
    if config_path is None:
        raise ConfigError("no config file to point at the model", where="edgedet models install",
                          fix="pass --config FILE (e.g. /etc/edgedet/config.yaml)")
    config, _ = load_config(config_path, check_files=False)  # read_yaml: readable and a mapping, or one line
    key, model = config.select_classifier(getattr(args, "classifier", None), option="--as",
                                          purpose="say which one this model replaces", where=config_path)
    chosen = model.name if config.models is not None else None
    folder: Path = args.dir or (model.path.parent if model.path is not None else config_path.parent)
    if read_tflite(source).is_edgetpu and model.delegate != "edgetpu":
        raise ModelError(f"refused: compiled for the Edge TPU, and the config runs {key}.delegate: cpu",
                         where=source, fix=f"set {key}.delegate: edgetpu in {config_path} (with a Coral), or "
                         "install the CPU build of the model")
    target = folder.resolve() / source.name
    target_sidecar = target.with_suffix(".json")

    if not args.dry_run:
        folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".edgedet-install-", dir=folder if folder.is_dir() else None))
    try:
        staged = staging / source.name
        shutil.copyfile(source, staged)
        if sidecar is not None:
            shutil.copyfile(sidecar, staged.with_suffix(".json"))
        check_cfg = model.replace(path=staged, cpu_model=None, fallback="fail")
        name = check_model(check_cfg, args.images)
        text = config_path.read_text(encoding="utf-8")
        new_text = set_classifier_path(text, chosen, str(target)) if chosen is not None \
            else set_model_path(text, str(target))
        _validate(new_text, config_path)
        plan = reload_plan(args, config_path)
        steps = [f"copy {source} -> {target}"]
        if sidecar is not None:
            steps.append(f"copy {sidecar} -> {target_sidecar}")
        steps += [f"set {key}.path in {config_path}: {model.path} -> {target}", plan.text]
        if args.dry_run:
            print("dry run, nothing changed; would:")
            for step in steps:
                print(f"  {step}")
            return 0
        if sidecar is not None:
            os.replace(staged.with_suffix(".json"), target_sidecar)
        elif target_sidecar.exists():
            target_sidecar.unlink()  # an old sidecar of the same name would describe another model
        os.replace(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if new_text != text:
        _write_atomically(config_path, new_text)
    _reload(plan)
    for step in steps:
        print(f"done: {step}")
    print(f"installed {name}")
    return 0


def _validate(text: str, config_path: Path) -> None:
    """The edited config must load as the daemon will load it (model files need not exist yet)."""
    from edgedet.config import build_config, parse_yaml

    build_config(parse_yaml(text, config_path), str(config_path))


def main(args: argparse.Namespace) -> int:
    try:
        return install(args)  # an EdgedetError is reported by the command line (cli.run_command)
    except OSError as exc:
        print(f"edgedet: error: models install: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 2
