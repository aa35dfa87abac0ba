"""The ``edgedet`` command line: one argparse tree for every command.

``run`` and ``classify`` are defined here; ``check-config``, ``bench`` and ``models`` by their own modules
(``add_arguments(parser)``, imported only when that command is chosen, so ``edgedet run`` never loads bench
code). Each command sets ``handler``; :func:`run_command` dispatches to it. Every usage error and every
:class:`EdgedetError` is one line, ``edgedet: error: ...``, and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Optional

from edgedet import __version__
from edgedet.cmdline import OneLineParser, Populate, report_error
from edgedet.errors import EXIT_USAGE, EdgedetError

log = logging.getLogger("edgedet")


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
    g.add_argument("--roi", metavar="X1,Y1,X2,Y2", help="region of interest in fractions of the frame, "
                   "e.g. 0.5,0,1,1 = the right half (model.preprocess.roi)")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    _add_config_args(p)
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N processed frames")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--stats-file", type=Path, metavar="PATH", help="write the final statistics as JSON on exit")
    p.set_defaults(handler=cmd_run)


def _classify_arguments(p: argparse.ArgumentParser) -> None:
    _add_config_args(p)
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image, one per line")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(handler=cmd_classify)


def _arguments_of(module: str) -> Populate:
    """The subcommand's arguments as its own module defines them (``add_arguments``), imported when used."""

    def populate(p: argparse.ArgumentParser) -> None:
        importlib.import_module(module).add_arguments(p)

    return populate


def build_parser() -> argparse.ArgumentParser:
    """The one parser tree of every ``edgedet`` command; each subparser is filled only when it is chosen."""
    parser = OneLineParser(prog="edgedet", description="Classify camera frames with a TFLite MobileNet "
                           "(CPU or Coral Edge TPU) and publish them over MQTT.")
    parser.add_argument("--version", action="version", version=f"edgedet {__version__}")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    parser.add_argument("--log-format", choices=["auto", "plain", "json"], default=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("run", help="run the daemon: capture, classify, publish (until SIGTERM or a bound)",
                   populate=_run_arguments)
    sub.add_parser("check-config", help="validate a config and print the effective config, secrets masked",
                   populate=_arguments_of("edgedet.checkconfig"))
    sub.add_parser("classify", help="classify image files and print classes and per-stage times",
                   populate=_classify_arguments)
    sub.add_parser("collect", help="save frames of the source as the model sees them, for training data",
                   populate=_arguments_of("edgedet.collect"))
    sub.add_parser("doctor", help="check the whole chain on this box (platform to MQTT), each problem with its fix",
                   populate=_arguments_of("edgedet.doctor.cli"))
    sub.add_parser("bench", help="time and compare models on this device (edgedet bench --help)",
                   populate=_arguments_of("edgedet.bench.cli"))
    sub.add_parser("models", help="inspect model files; list and pull public MobileNets (catalogue)",
                   populate=_arguments_of("edgedet.catalog"))
    return parser


def _model_overrides(args: argparse.Namespace) -> list[str]:
    """CLI model flags as --set overrides, so they pass through the same validation as the config file."""
    mapping = {"model": "path", "labels": "labels", "top_k": "top_k", "runtime": "runtime",
               "delegate": "delegate", "edgetpu_device": "edgetpu_device", "fallback": "fallback",
               "cpu_model": "cpu_model", "num_threads": "num_threads"}
    out = [f"model.{key}={json.dumps(str(Path(v).resolve()) if key in {'path', 'labels', 'cpu_model'} else v)}"
           for attr, key in mapping.items() if (v := getattr(args, attr, None)) is not None]
    out += [f"model.preprocess.{attr}={v}" for attr in ("resize", "crop") if (v := getattr(args, attr, None))]
    if getattr(args, "roi", None):
        out.append(f"model.preprocess.roi=[{args.roi}]")
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
            report_error("edgedet", exc)
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


def _setup_logging(level: Optional[str], fmt: Optional[str] = None) -> None:
    from edgedet.logsetup import setup_logging

    setup_logging(level or "info", fmt or "auto")


def run_command(argv: list[str], *, configure_logging: bool = True) -> int:
    """Parse ``argv`` with the one tree and run the chosen command. In-process callers (``bench_main``,
    ``models_main``) pass ``configure_logging=False`` to leave the root logger as they found it."""
    try:
        args = build_parser().parse_args(argv)
        if configure_logging:
            _setup_logging(args.log_level, args.log_format)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except EdgedetError as exc:
        return report_error("edgedet", exc)
    except KeyboardInterrupt:
        return 130


def main(argv: Optional[list[str]] = None) -> int:
    return run_command(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    raise SystemExit(main())
