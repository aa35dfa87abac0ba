"""``edgedet collect DIR --label NAME``: save frames of the configured source as the model sees them.

Each frame goes through the model's own view (``model.preprocess``: region of interest, crop, resize to the
input size; see edgedet/model/preprocess.py) and is written as a lossless PNG to ``DIR/NAME/``, ready for
the host script's training data (a folder of label folders). ``--full`` also keeps the whole frame, under
``DIR/.full/NAME/`` with the same file name: beside the training images, but in a hidden folder that the
training and ``bench --images`` readers skip, so a full frame is never mistaken for a training image.
Prints each file it writes on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

from edgedet.errors import EXIT_USAGE, ConfigError, ModelError
from edgedet.model.preprocess import Preprocessor
from edgedet.publish.uncertain import RAW_PIXELS, label_folder, save_png

FULL_FOLDER = ".full"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, metavar="DIR", help="the data folder (one sub-folder per label)")
    p.add_argument("--label", required=True, metavar="NAME", help="the class of what the camera sees now")
    p.add_argument("--every", type=float, default=0.0, metavar="S",
                   help="seconds between saved frames (default 0: every frame the source delivers)")
    p.add_argument("--count", type=int, default=100, metavar="N",
                   help="stop after N frames (default 100; 0 = until the source ends or Ctrl-C)")
    p.add_argument("--full", action="store_true", help=f"also save the whole frame, in DIR/{FULL_FOLDER}/NAME/")
    p.add_argument("--model", dest="classifier", metavar="NAME",
                   help="with models: in the config, the classifier whose region and input size to save")
    p.add_argument("--config", metavar="FILE", help="config file (as for run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.preprocess.roi=[0.5,0,1,1] (repeatable)")
    p.set_defaults(handler=main)


class _Progress:
    """tqdm when installed, else one plain line (rewritten in place on a terminal)."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self._bar: Any = None
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            self._bar = tqdm(total=total or None, unit="frame", desc=f"collect {label}", file=sys.stderr)

    def update(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)
            return
        of = f"/{self.total}" if self.total else ""
        end = "\r" if sys.stderr.isatty() else "\n"
        print(f"collect {self.label}: {self.done}{of} frames saved", end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif sys.stderr.isatty():
            print(file=sys.stderr)


def _preprocessor(model: Any) -> Preprocessor:
    """The model's view without loading an interpreter: a running daemon may hold the Edge TPU."""
    from edgedet.model.tflite_file import read_tflite

    if model.path is None:
        raise ModelError("model.path is not set and the bundled default model was not found",
                         fix="set model.path in config.yaml or pass --set model.path=FILE")
    model_file = read_tflite(model.path)
    model_file.validate_classifier()
    _, height, width, _ = (int(d) for d in model_file.inputs[0].shape)
    from edgedet.model.classifier import preprocess_settings

    resize, crop, backend, _ = preprocess_settings(model.preprocess, model_file)  # as the daemon will
    try:
        return Preprocessor(width, height, RAW_PIXELS, resize, crop, backend, roi=model.preprocess.roi)
    except ImportError as exc:
        raise ModelError(str(exc), fix="or set model.preprocess.backend: auto") from None


def collect(args: argparse.Namespace) -> int:
    from edgedet.config import load_config
    from edgedet.frames import open_source

    if args.count < 0:
        raise ConfigError(f"--count {args.count}: must be >= 0 (0 = until the source ends)")
    if args.every < 0:
        raise ConfigError(f"--every {args.every}: must be >= 0")
    name = label_folder(args.label)
    if name != args.label:
        raise ConfigError(f"--label {args.label!r}: use letters, digits, '-', '_' and '.' only (a folder name)",
                          fix=f"e.g. --label {name}")
    config, _ = load_config(args.config, args.overrides)
    _, entry = config.select_classifier(getattr(args, "classifier", None), option="--model",
                                        purpose="say whose view to save")
    view = _preprocessor(entry)
    folder = args.dir / name
    full_folder = args.dir / FULL_FOLDER / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if args.full:
            full_folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder ({exc.strerror})", where=folder,
                          fix="pick a writable folder") from None
    source = open_source(config.source, view.frame_size_hint())
    source.open()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    progress = _Progress(args.count, name)
    saved = index = 0
    next_due: Optional[float] = None
    try:
        while not args.count or saved < args.count:
            frame = source.read(config.source.timeout_s)
            if frame is None:
                break
            now = time.monotonic()
            if next_due is not None and now < next_due:
                continue
            next_due = now + args.every
            file_name = f"{name}_{stamp}_{index:05d}.png"
            while (folder / file_name).exists():  # a second collect within the same second adds to it
                index += 1
                file_name = f"{name}_{stamp}_{index:05d}.png"
            index += 1
            save_png(folder / file_name, view.view(frame.image))
            print(folder / file_name, flush=True)
            if args.full:
                save_png(full_folder / file_name, frame.image)
                print(full_folder / file_name, flush=True)
            saved += 1
            progress.update()
    except KeyboardInterrupt:
        pass
    finally:
        progress.close()
        source.close()
    print(f"collect: {saved} frame(s) of {view.out_w}x{view.out_h} saved in {folder}", file=sys.stderr)
    return 0 if saved else EXIT_USAGE


def main(args: argparse.Namespace) -> int:
    """``edgedet collect``; an EdgedetError is reported by the command line (cli.run_command), like every command's."""
    return collect(args)
