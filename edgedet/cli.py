"""The ``edgedet`` command line. Every user error is one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

from edgedet import __version__
from edgedet.errors import EXIT_USAGE, EdgedetError

log = logging.getLogger("edgedet")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="config file (default: $EDGEDET_CONFIG, "
                   "/etc/edgedet/config.yaml, ./config.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.top_k=5 (repeatable)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (override config.yaml's model section)")
    g.add_argument("--model", metavar="FILE", help="a .tflite classification model")
    g.add_argument("--labels", metavar="FILE", help="labels file (one per line, or 'id label' lines)")
    g.add_argument("--top-k", type=int, metavar="K")
    g.add_argument("--runtime", choices=["auto", "litert", "tflite-runtime", "tensorflow"])
    g.add_argument("--delegate", choices=["cpu", "edgetpu"])
    g.add_argument("--device", dest="edgetpu_device", metavar="DEV", help="usb, usb:N, pci, pci:N or :N")
    g.add_argument("--fallback", choices=["cpu", "fail"])
    g.add_argument("--cpu-model", metavar="FILE")
    g.add_argument("--threads", dest="num_threads", metavar="N|auto")
    g.add_argument("--resize", choices=["bilinear", "nearest", "area", "antialias"])
    g.add_argument("--crop", choices=["full", "center"])


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgedet", description="Classify camera frames with a TFLite MobileNet "
                     "(CPU or Coral Edge TPU) and publish them over MQTT.")
    parser.add_argument("--version", action="version", version=f"edgedet {__version__}")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    parser.add_argument("--log-format", choices=["auto", "plain", "json"], default=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("run", help="run the daemon: capture, classify, publish (until SIGTERM or a bound)")
    _add_config_args(p)
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N processed frames")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--stats-file", type=Path, metavar="PATH", help="write the final statistics as JSON on exit")

    p = sub.add_parser("check-config", help="validate a config and print the effective config, secrets masked")
    p.add_argument("file", nargs="?", help="config file (default: the search order of run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("classify", help="classify image files and print classes and per-stage times")
    _add_config_args(p)
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image, one per line")
    p.add_argument("images", nargs="+", metavar="IMAGE")

    sub.add_parser("bench", help="time and compare models on this device (edgedet bench --help)", add_help=False)
    p = sub.add_parser("models", help="inspect model files; list and pull public MobileNets (catalogue)")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", parser_class=_Parser)
    msub.add_parser("list", help="the catalogue of public MobileNet TFLite files", add_help=False)
    msub.add_parser("pull", help="download, verify and store a catalogue model", add_help=False)
    info = msub.add_parser("info", help="a model FILE: input, output, ops, Edge TPU compilation, size, sha256; "
                           "or a catalogue NAME")
    info.add_argument("model", metavar="MODEL")
    info.add_argument("--json", action="store_true")
    return parser


def _model_overrides(args: argparse.Namespace) -> list[str]:
    """CLI model flags as --set overrides, so they pass through the same validation as the config file."""
    mapping = {"model": "path", "labels": "labels", "top_k": "top_k", "runtime": "runtime",
               "delegate": "delegate", "edgetpu_device": "edgetpu_device", "fallback": "fallback",
               "cpu_model": "cpu_model", "num_threads": "num_threads"}
    out = [f"model.{key}={json.dumps(str(Path(v).resolve()) if key in {'path', 'labels', 'cpu_model'} else v)}"
           for attr, key in mapping.items() if (v := getattr(args, attr, None)) is not None]
    out += [f"model.preprocess.{attr}={v}" for attr in ("resize", "crop") if (v := getattr(args, attr, None))]
    return out


def cmd_classify(args: argparse.Namespace) -> int:
    from edgedet.config import load_config
    from edgedet.errors import ImageError
    from edgedet.model.classifier import Classifier
    from edgedet.model.preprocess import load_image

    config, _ = load_config(args.config, [*args.overrides, *_model_overrides(args)])
    classifier = Classifier.from_config(config.model)
    info = classifier.info
    runtime, delegate = info["runtime"], info["delegate"]
    if not args.json:
        fallback = " (FALLBACK from edgetpu)" if delegate["fallback"] else ""
        print(f"model {classifier.name} · {runtime['name']} {runtime['version']} · {runtime['threads']} threads · "
              f"delegate {delegate['active']}{fallback} · init {info['init_ms']:.1f} ms · first invoke "
              f"{info['first_invoke_ms']:.1f} ms")
    failed = 0
    for image_path in args.images:
        try:
            image = load_image(image_path, config.model.preprocess.max_image_pixels)
        except ImageError as exc:
            print(f"edgedet: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        result = classifier.infer(image)
        latency = {k: round(v, 3) for k, v in result.latency_ms.items()}
        if args.json:
            print(json.dumps({"image": image_path, "top_k": [c.as_dict() for c in result.top_k],
                              "latency_ms": latency, "runtime": runtime, "delegate": delegate,
                              "model": classifier.name}), flush=True)
        else:
            print(image_path)
            for c in result.top_k:
                print(f"  {c.score:6.3f}  {c.id:5d}  {c.label}")
            print("  " + " · ".join(f"{k} {v:.2f} ms" for k, v in latency.items()))
    return EXIT_USAGE if failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    from edgedet import early_signals

    early_signals.install()  # before the imports and the model load below: a SIGHUP now must not kill us
    from edgedet.config import load_config
    from edgedet.daemon import RunOptions, run_daemon
    from edgedet.errors import ConfigError

    if args.max_frames is not None and args.max_frames < 0:
        raise ConfigError(f"--max-frames {args.max_frames}: must be >= 0 (0 = unbounded)")
    if args.duration is not None and args.duration < 0:
        raise ConfigError(f"--duration {args.duration}: must be >= 0 (0 = unbounded)")
    config, found = load_config(args.config, args.overrides)
    _setup_logging(args.log_level or config.logging.level, args.log_format or config.logging.format)
    log.debug("config: %s", found or "embedded defaults")
    return run_daemon(config, RunOptions(found, list(args.overrides), args.max_frames, args.duration,
                                         args.stats_file))


def cmd_models_info(args: argparse.Namespace) -> int:
    from edgedet.model.tflite_file import read_tflite

    model = read_tflite(args.model)
    data: dict[str, Any] = {
        "path": str(model.path), "size_bytes": model.size_bytes, "sha256": model.sha256,
        "edgetpu_compiled": model.is_edgetpu, "description": model.description,
        "inputs": [t.as_dict() for t in model.inputs], "outputs": [t.as_dict() for t in model.outputs],
        "ops": model.op_counts(), "op_versions": model.op_versions(),
        "normalization": ({"mean": model.metadata_normalization[0], "std": model.metadata_normalization[1],
                           "source": "metadata"} if model.metadata_normalization else None),
        "embedded_labels": len(model.embedded_labels) if model.embedded_labels else 0,
        "sidecar": str(model.sidecar_path()) if model.sidecar else None,
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{model.path}  ({model.size_bytes:,} bytes, sha256 {model.sha256})")
    print(f"  compiled for the Edge TPU: {'yes' if model.is_edgetpu else 'no'}")
    for kind in ("inputs", "outputs"):
        for t in data[kind]:
            q = t["quantization"]
            qs = f" scale={q['scale']:.6g} zero_point={q['zero_point']}" if q else ""
            print(f"  {kind[:-1]:6s} {t['name']}: {t['shape']} {t['dtype']}{qs}")
    if data["normalization"]:
        print(f"  normalization (metadata): mean={data['normalization']['mean']} std={data['normalization']['std']}")
    print(f"  labels embedded: {data['embedded_labels']}")
    print("  ops: " + ", ".join(f"{name} x{count} (v{model.op_versions()[name]})"
                               for name, count in data["ops"].items()))
    return 0


def _setup_logging(level: Optional[str], fmt: Optional[str] = None) -> None:
    from edgedet.logsetup import setup_logging

    setup_logging(level or "info", fmt or "auto")


def _command_words(argv: list[str]) -> list[str]:
    """The positional words of argv, skipping global options and their values."""
    words, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token in ("--log-level", "--log-format"):
            skip = True
        elif not token.startswith("-"):
            words.append(token)
    return words


def _delegated(argv: list[str]) -> Optional[int]:
    """``bench`` and the catalogue (``models list|pull``, ``models info NAME``) have their own parsers."""
    words = _command_words(argv)
    if not words:
        return None
    index = argv.index(words[0])
    if words[0] == "bench":
        from edgedet.bench import bench_main

        _setup_logging(None)
        return bench_main(argv[index + 1:])
    if words[0] == "models" and len(words) > 1:
        is_file = words[1] == "info" and len(words) > 2 and (Path(words[2]).exists() or words[2].endswith(".tflite"))
        if words[1] in ("list", "pull") or (words[1] == "info" and not is_file):
            from edgedet.catalog import models_main

            _setup_logging(None)
            return models_main(argv[index + 1:])
    return None


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        delegated = _delegated(argv)
    except EdgedetError as exc:
        print(f"edgedet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if delegated is not None:
        return delegated
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "check-config":
            from edgedet.checkconfig import check_config_command

            return check_config_command(args.file, args.overrides)
        if args.command == "classify":
            return cmd_classify(args)
        if args.command == "models" and args.models_command == "info":
            return cmd_models_info(args)
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    except EdgedetError as exc:
        print(f"edgedet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
