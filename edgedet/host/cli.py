"""edgedet-host: synth-dataset, train, convert, evaluate, sweep and default-model, one command per step.

Needs the ``host`` extra (TensorFlow); the daemon never imports this package. TensorFlow is imported only
inside the commands that need it, so bad arguments are refused in well under a second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, get_args

from edgedet.cmdline import OneLineParser, report_error
from edgedet.errors import EdgedetError
from edgedet.model.config import PREPROCESS_DEFAULTS, Backend, CropMode, ResizeMethod


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_preprocess_args(parser: argparse.ArgumentParser) -> None:
    # The daemon's model.preprocess choices: images are prepared with its code, and the sidecar records them.
    group = parser.add_argument_group("preprocessing (the daemon's model.preprocess; recorded in the sidecar)")
    group.add_argument("--resize", choices=get_args(ResizeMethod), default=PREPROCESS_DEFAULTS["resize"])
    group.add_argument("--crop", choices=get_args(CropMode), default=PREPROCESS_DEFAULTS["crop"])
    group.add_argument("--backend", choices=get_args(Backend), default=PREPROCESS_DEFAULTS["backend"],
                       help="bilinear's implementation (default auto: opencv when installed)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="edgedet-host", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth-dataset", help="generate a pikachu/no-pikachu image folder")
    synth.add_argument("out", type=Path)
    synth.add_argument("--per-class", type=_positive_int, default=100)
    synth.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    synth.add_argument("--seed", type=int, default=0)

    train = commands.add_parser("train", help="retrain a MobileNet with a new head on DATA_DIR/<class>/")
    train.add_argument("data_dir", type=Path)
    train.add_argument("--arch", default="mobilenet_v2", help="mobilenet_v1 or mobilenet_v2")
    train.add_argument("--alpha", type=float, default=0.35, help="width multiplier (default 0.35)")
    train.add_argument("--size", type=int, default=96, help="input side in pixels (default 96)")
    train.add_argument("--epochs", type=_positive_int, default=5)
    train.add_argument("--batch", type=_positive_int, default=32)
    train.add_argument("--lr", type=float, default=None,
                       help="Adam learning rate (default 1e-4 with trained --weights, 1e-3 with --weights none)")
    train.add_argument("--val-split", type=float, default=0.2)
    train.add_argument("--weights", default="imagenet", help="imagenet (Keras cache), none, or a file")
    train.add_argument("--fine-tune-layers", type=int, default=None,
                       help="train the last N base layers too (default: none with imagenet, all with none)")
    train.add_argument("--augment", action="store_true", help="random flips, rotations, zoom and contrast")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=_positive_int, default=None, help="TensorFlow intra-op threads")
    _add_preprocess_args(train)
    train.add_argument("--out", type=Path, required=True)

    convert = commands.add_parser("convert", help="convert to a TFLite flatbuffer with a metadata sidecar")
    convert.add_argument("model", type=Path, help="Keras .keras/.h5, SavedModel folder, or frozen .pb")
    convert.add_argument("--quant", default="float32", help="float32, float16, dynamic or int8")
    convert.add_argument("--io", default=None, help="uint8, int8 or float32 (default uint8 for int8)")
    convert.add_argument("--representative", type=Path, default=None, help="images to calibrate int8 ranges")
    convert.add_argument("--num-calib", type=int, default=100)
    convert.add_argument("--input-arrays", default=None, help="frozen graph input name(s), comma-separated")
    convert.add_argument("--output-arrays", default=None, help="frozen graph output tensor name(s)")
    convert.add_argument("--size", type=int, default=None, help="input side when the model does not fix it")
    convert.add_argument("--arch", default=None, help="sidecar architecture (default from metrics.json)")
    convert.add_argument("--alpha", type=float, default=None, help="width for the sidecar")
    convert.add_argument("--labels", type=Path, default=None, help="labels file (default labels.txt beside)")
    convert.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    convert.add_argument("--out", type=Path, required=True)

    default = commands.add_parser("default-model", help="regenerate the bundled default model (fixed recipe)")
    default.add_argument("--out", type=Path, default=Path("models"))
    default.add_argument("--work", type=Path, default=None, help="keep the datasets and Keras model here")

    sweep = commands.add_parser("sweep", help="train, convert and evaluate several MobileNets on DATA_DIR")
    sweep.add_argument("data_dir", type=Path)
    sweep.add_argument("--candidates", default=None,
                       help="comma list like v1_0.25_128,v2_0.35_96 (default: V1 x {1.0,0.75,0.5,0.25} x "
                       "{224,192,160,128}, v2_0.35_96, v2_1.4_224)")
    sweep.add_argument("--heldout", type=float, default=0.2, help="fraction held out for the comparison")
    sweep.add_argument("--epochs", type=_positive_int, default=5)
    sweep.add_argument("--batch", type=_positive_int, default=32)
    sweep.add_argument("--lr", type=float, default=None,
                       help="Adam learning rate (default 1e-4 with trained --weights, 1e-3 with --weights none)")
    sweep.add_argument("--weights", default="imagenet", help="imagenet (Keras cache) or none")
    sweep.add_argument("--augment", action="store_true")
    sweep.add_argument("--num-calib", type=_positive_int, default=100)
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--threads", type=_positive_int, default=None)
    sweep.add_argument("--out", type=Path, required=True)

    evaluate = commands.add_parser("evaluate", help="accuracy of a .tflite on DATA_DIR, agreement with Keras")
    evaluate.add_argument("model", type=Path)
    evaluate.add_argument("data_dir", type=Path)
    evaluate.add_argument("--reference", type=Path, default=None, help="Keras model to compare top-1 with")
    evaluate.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    return parser


def _names(text: str | None) -> list[str] | None:
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


def _preprocess_spec(args: argparse.Namespace) -> Any:
    from edgedet.host.data import PreprocessSpec

    return PreprocessSpec(resize=args.resize, crop=args.crop, backend=args.backend)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.command == "synth-dataset":
        from edgedet.host.synth import generate

        counts = generate(args.out, per_class=args.per_class, size=args.size, seed=args.seed)
        _log(f"wrote {sum(counts.values())} images to {args.out}: "
             + ", ".join(f"{k}={v}" for k, v in counts.items()))
        return 0
    if args.command == "train":
        from edgedet.host.train import TrainOptions, train

        train(TrainOptions(
            data_dir=args.data_dir, out=args.out, architecture=args.arch, alpha=args.alpha, size=args.size,
            epochs=args.epochs, batch=args.batch, learning_rate=args.lr, val_split=args.val_split,
            weights=args.weights, fine_tune_layers=args.fine_tune_layers, augment=args.augment,
            seed=args.seed, threads=args.threads, verbose=1 if sys.stdout.isatty() else 2,
            preprocess=_preprocess_spec(args)), log=_log)
        return 0
    if args.command == "convert":
        from edgedet.host.convert import ConvertOptions, convert

        convert(ConvertOptions(
            model=args.model, out=args.out, quantization=args.quant, io_dtype=args.io,
            representative=args.representative, num_calib=args.num_calib,
            input_arrays=_names(args.input_arrays), output_arrays=_names(args.output_arrays), size=args.size,
            architecture=args.arch, alpha=args.alpha, labels=args.labels, seed=args.seed), log=_log)
        return 0
    if args.command == "default-model":
        from edgedet.host.default_model import build_default_model

        build_default_model(args.out, args.work, log=_log)
        return 0
    if args.command == "sweep":
        from edgedet.host.sweep import DEFAULT_CANDIDATES, SweepOptions, sweep

        sweep(SweepOptions(
            data_dir=args.data_dir, out=args.out,
            candidates=tuple(_names(args.candidates) or DEFAULT_CANDIDATES), heldout=args.heldout,
            epochs=args.epochs, batch=args.batch, learning_rate=args.lr, weights=args.weights,
            augment=args.augment, num_calib=args.num_calib, seed=args.seed, threads=args.threads), log=_log)
        return 0
    from edgedet.host.evaluate import evaluate

    result = evaluate(args.model, args.data_dir, args.reference, log=_log)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        try:
            args.json.write_text(text + "\n")
        except OSError as err:
            raise EdgedetError(f"cannot write ({err.strerror})", where=args.json) from None
    return 0


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter hides the one line that matters; users can lower this themselves.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return run(build_parser().parse_args(argv))
    except EdgedetError as err:  # a usage error too: one "edgedet-host: error: ..." line, exit 2
        return report_error("edgedet-host", err)
    except KeyboardInterrupt:
        print("edgedet-host: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
