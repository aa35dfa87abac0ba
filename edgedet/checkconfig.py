"""``edgedet check-config [FILE]``: validate a config and print the effective result with secrets masked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

from edgedet.config import EdgedetConfig, load_config
from edgedet.errors import EdgedetError

MASK = "********"


def effective_config(config: EdgedetConfig) -> dict[str, Any]:
    """The config as plain data, with every secret replaced by a mask (it gets pasted into bug reports)."""
    data = config.as_dict(json=True)
    mqtt = data.get("mqtt", {})
    if mqtt.get("password") is not None:
        # A password from mqtt.password_file is never copied into the config: only its path is shown.
        mqtt["password"] = MASK
    http = data.get("http", {})
    if http.get("token") is not None:
        http["token"] = MASK
    return data


def print_effective_config(path: str | Path | None, overrides: list[str] | None, out: TextIO) -> None:
    """Validate (raising EdgedetError); print the effective config as YAML on ``out``."""
    config, found = load_config(path, overrides)
    origin = str(found) if found else "built-in defaults (no config file found)"
    out.write(f"# effective config from {origin}\n")
    out.write(yaml.safe_dump(effective_config(config), sort_keys=False, default_flow_style=False))


def check_config_command(path: str | Path | None, overrides: list[str] | None = None, *,
                         out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Validate; print the effective config as YAML on ``out``. Returns 0, or 2 with one line on ``err``."""
    try:
        print_effective_config(path, overrides, out or sys.stdout)
    except EdgedetError as exc:
        print(str(exc), file=err or sys.stderr)
        return exc.exit_code
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``edgedet check-config``'s arguments, in the one parser tree of edgedet/cli.py."""
    parser.add_argument("file", nargs="?", help="config file (default: the search order of run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    print_effective_config(args.file, args.overrides, sys.stdout)  # errors: one edgedet: error: line (cli)
    return 0
