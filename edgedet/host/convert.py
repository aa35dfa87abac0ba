"""Conversion of a Keras model, a SavedModel or a frozen GraphDef to a TFLite flatbuffer for the Pi.

Every output has a static ``[1, H, W, 3]`` input (the Edge TPU compiler refuses dynamic shapes; TF 2.21's
``from_keras_model`` keeps the batch dynamic), so conversion always goes through a concrete function
traced with a fixed ``TensorSpec`` (or, for a frozen graph, explicit input shapes).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

import edgedet
from edgedet.errors import EdgedetError, ImageError
from edgedet.host.data import DEFAULT_SPEC, IMAGE_SUFFIXES, PreprocessSpec, load_image, pixel_preprocessor, resolved
from edgedet.host.sidecar import (
    MOBILENET_NORMALIZATION,
    FlatbufferInfo,
    build_sidecar,
    inspect_flatbuffer,
    write_sidecar,
)
from edgedet.host.train import LABELS_NAME, METRICS_NAME

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
IO_DTYPES = ("uint8", "int8", "float32")
# Tensor types a full-integer model may contain: int8 activations/weights, int32 biases, and uint8 only at
# the I/O boundary (QUANTIZE ops convert it to int8 on the way in and out).
FULL_INTEGER_DTYPES = {"int8", "uint8", "int32"}


class ConvertOptions(NamedTuple):
    model: Path
    out: Path
    quantization: str = "float32"
    io_dtype: str | None = None  # None: uint8 for int8, float32 otherwise
    representative: Path | None = None
    num_calib: int = 100
    input_arrays: list[str] | None = None  # frozen GraphDef only
    output_arrays: list[str] | None = None
    size: int | None = None  # input height = width when the source model does not fix it
    architecture: str | None = None  # sidecar overrides when there is no metrics.json beside the model
    alpha: float | None = None
    labels: Path | None = None
    seed: int = 0


class ConvertResult(NamedTuple):
    path: Path
    sidecar_path: Path
    sidecar: dict[str, Any]
    info: FlatbufferInfo
    edgetpu_command: list[str] | None  # set when int8; run or printed
    edgetpu_log: Path | None  # set when edgetpu_compiler ran


def _model_kind(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        raise EdgedetError("folder is not a SavedModel (no saved_model.pb)", where=path,
                           fix="pass a Keras .keras/.h5 file, a SavedModel folder or a frozen .pb")
    if not path.is_file():
        raise EdgedetError("model not found", where=path)
    if path.suffix in (".keras", ".h5"):
        return "keras"
    if path.suffix == ".pb":
        return "frozen"
    raise EdgedetError(f"unknown model format {path.suffix!r}", where=path,
                       fix="pass a Keras .keras/.h5 file, a SavedModel folder or a frozen GraphDef .pb")


def _check_options(options: ConvertOptions, kind: str) -> str:
    """Validate before loading TensorFlow; return the I/O dtype."""
    if options.quantization not in QUANTIZATIONS:
        raise EdgedetError(f"unknown --quant {options.quantization!r}",
                           fix=f"use one of {', '.join(QUANTIZATIONS)}")
    io_dtype = options.io_dtype or ("uint8" if options.quantization == "int8" else "float32")
    if io_dtype not in IO_DTYPES:
        raise EdgedetError(f"unknown --io {io_dtype!r}", fix=f"use one of {', '.join(IO_DTYPES)}")
    if options.quantization != "int8" and io_dtype != "float32":
        raise EdgedetError(f"--io {io_dtype} needs --quant int8",
                           fix="integer I/O only exists for full-integer models; drop --io")
    if options.quantization == "int8":
        if options.representative is None:
            raise EdgedetError("--quant int8 needs a representative dataset to calibrate activation ranges",
                               fix="pass --representative DIR (a few hundred training images)")
        if not options.representative.is_dir():
            raise EdgedetError("representative folder not found", where=options.representative)
        if options.num_calib < 1:
            raise EdgedetError(f"--num-calib {options.num_calib} must be >= 1")
    if kind == "frozen" and not (options.input_arrays and options.output_arrays):
        raise EdgedetError("a frozen GraphDef needs its tensor names", where=options.model,
                           fix="pass --input-arrays NAME and --output-arrays NAME (see the graph in Netron)")
    if options.out.suffix != ".tflite":
        raise EdgedetError("output must be a .tflite file", where=options.out)
    try:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        probe = options.out.parent / f".{options.out.name}.write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise EdgedetError(f"output path is not writable ({err.strerror})", where=options.out,
                           fix="choose a writable --out") from None
    return io_dtype


def _training_metadata(model_path: Path) -> dict[str, Any]:
    """The ``model`` section of metrics.json written by ``edgedet-host train`` beside the model, if any."""
    metrics = model_path.parent / METRICS_NAME
    if metrics.is_file():
        try:
            return dict(json.loads(metrics.read_text()).get("model", {}))
        except (OSError, ValueError, AttributeError):
            return {}
    return {}


def _read_labels(path: Path) -> list[str]:
    try:
        labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as err:
        raise EdgedetError(f"cannot read labels ({err.strerror})", where=path) from None
    if not labels:
        raise EdgedetError("labels file is empty", where=path)
    return labels


def representative_images(folder: Path, size: tuple[int, int], count: int, seed: int,
                          spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """Up to ``count`` readable images from anywhere under ``folder``, a seeded sample, as uint8.

    ``size`` is (height, width); the images are prepared as the daemon prepares frames (``spec``).
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    order = np.random.default_rng(seed).permutation(len(files))
    prepare = pixel_preprocessor((size[1], size[0]), spec)
    images: list[np.ndarray] = []
    for index in order:
        if len(images) >= count:
            break
        try:
            images.append(load_image(files[index], size[0], preprocessor=prepare))
        except (ImageError, ValueError):  # ValueError: FrameError
            continue  # unreadable calibration images only lower the count, reported below
    if not images:
        raise EdgedetError("no readable images in the representative folder", where=folder,
                           fix="pass a folder of training images (PNG/JPEG/BMP)")
    return np.stack(images)


def _concrete_function_for_keras(model: Any, size: tuple[int, int]) -> Any:
    import tensorflow as tf

    height, width = size

    @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], tf.float32, name="input")])
    def serve(images: Any) -> Any:
        return model(images, training=False)

    return serve.get_concrete_function()


def _converter_for(kind: str, options: ConvertOptions) -> tuple[Any, tuple[int, int], Any]:
    """A TFLiteConverter with a static batch of 1, the model's (height, width), and what must stay referenced
    until ``convert()`` returns: a concrete function holds its variables weakly, and a garbage collection in
    between deletes them ("Called a function referencing variables which have been deleted")."""
    import tensorflow as tf

    path = options.model
    if kind == "keras":
        import keras

        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as err:  # Keras raises many types for a corrupt or foreign file
            raise EdgedetError(f"cannot load the Keras model ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''})", where=path) from None
        height, width = model.input_shape[1:3]
        if height is None or width is None:
            if not options.size:
                raise EdgedetError("the model has no fixed input size", where=path, fix="pass --size S")
            height = width = options.size
        function = _concrete_function_for_keras(model, (height, width))
        return tf.lite.TFLiteConverter.from_concrete_functions([function]), (height, width), model
    if kind == "saved_model":
        loaded = tf.saved_model.load(str(path))
        signature = loaded.signatures.get("serving_default")
        if signature is None:
            raise EdgedetError("SavedModel has no serving_default signature", where=path)
        inputs = signature.structured_input_signature[1]
        if len(inputs) != 1:
            raise EdgedetError(f"SavedModel signature has {len(inputs)} inputs; one image input expected",
                               where=path)
        (input_name, spec), = inputs.items()
        dims = list(spec.shape)
        height, width = dims[1], dims[2]
        if height is None or width is None:
            if not options.size:
                raise EdgedetError("the SavedModel has no fixed input size", where=path, fix="pass --size S")
            height = width = options.size
        output_name = sorted(signature.structured_outputs)[0]

        fixed = tf.TensorSpec([1, height, width, dims[3] or 3], spec.dtype, name="input")

        @tf.function(input_signature=[fixed])
        def serve(images: Any) -> Any:
            return signature(**{input_name: images})[output_name]

        function = serve.get_concrete_function()
        return tf.lite.TFLiteConverter.from_concrete_functions([function], loaded), (height, width), loaded
    # Frozen GraphDef, the TOCO-era format: the v1 converter still reads it; shapes are pinned explicitly.
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as err:  # protobuf DecodeError and friends
        raise EdgedetError(f"not a frozen GraphDef ({type(err).__name__})", where=path) from None
    nodes = {node.name: node for node in graph_def.node}
    missing = [name for name in (options.input_arrays or []) + (options.output_arrays or [])
               if name.split(":")[0] not in nodes]
    if missing:
        raise EdgedetError(f"tensor(s) not in the graph: {', '.join(missing)}", where=path,
                           fix="check --input-arrays/--output-arrays against the graph's node names")
    input_arrays = options.input_arrays or []  # both checked non-empty by _check_options
    input_name = input_arrays[0]
    shape_attr = nodes[input_name.split(":")[0]].attr.get("shape")
    dims = [d.size for d in shape_attr.shape.dim] if shape_attr is not None else []
    if len(dims) == 4 and dims[1] > 0 and dims[2] > 0:
        height, width, channels = dims[1], dims[2], dims[3] if dims[3] > 0 else 3
    elif options.size:
        height = width = options.size
        channels = 3
    else:
        raise EdgedetError(f"input {input_name} has no fixed size in the graph", where=path,
                           fix="pass --size S")
    converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
        str(path), options.input_arrays, options.output_arrays,
        input_shapes={name: [1, height, width, channels] for name in input_arrays})
    return converter, (height, width), None


def _configure(converter: Any, options: ConvertOptions, io_dtype: str, size: tuple[int, int],
               normalization: dict[str, float], spec: PreprocessSpec, log: Callable[[str], None]) -> None:
    import tensorflow as tf

    if options.quantization == "float32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # Per-channel dense weights need FULLY_CONNECTED v12, which tflite-runtime 2.14 (the last wheel for
    # armv7l and Python < 3.10 on the Pi) cannot load; per-tensor dense weights keep an older version.
    converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    if options.quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
        return
    if options.quantization == "dynamic":
        return
    assert options.representative is not None  # checked by _check_options
    images = representative_images(options.representative, size, options.num_calib, options.seed, spec)
    log(f"calibrating int8 ranges on {len(images)} images from {options.representative}")
    mean, std = float(normalization["mean"]), float(normalization["std"])

    def calibration() -> Iterator[list[np.ndarray]]:
        for image in images:
            yield [((image[None].astype(np.float32) - mean) / std)]

    converter.representative_dataset = calibration
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    dtypes = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}
    converter.inference_input_type = dtypes[io_dtype]
    converter.inference_output_type = dtypes[io_dtype]


def check_flatbuffer(info: FlatbufferInfo, quantization: str, io_dtype: str, where: Path) -> None:
    """The promises of the output: static batch 1, and for int8 only builtin integer ops and tensors."""
    for tensor in info.inputs:
        if tensor.shape_signature[:1] != [1] or any(d < 0 for d in tensor.shape_signature):
            raise EdgedetError(f"converted input {tensor.name} has a dynamic shape {tensor.shape_signature}",
                               where=where)
    if quantization == "int8":
        if info.custom_ops:
            raise EdgedetError(f"int8 model contains custom ops {info.custom_ops}", where=where)
        if io_dtype != "float32" and not info.tensor_dtypes <= FULL_INTEGER_DTYPES:
            raise EdgedetError(f"int8 model is not full-integer: tensor types {sorted(info.tensor_dtypes)}",
                               where=where)
        io_types = {t.dtype for t in info.inputs + info.outputs}
        if io_types != {io_dtype}:
            raise EdgedetError(f"int8 model I/O is {sorted(io_types)}, expected {io_dtype}", where=where)


def edgetpu_command(path: Path) -> list[str]:
    return ["edgetpu_compiler", "-s", "-o", str(path.parent), str(path)]


def convert(options: ConvertOptions, log: Callable[[str], None] = print) -> ConvertResult:
    """Convert, check the flatbuffer, write the sidecar, and run or print the Edge TPU compile."""
    kind = _model_kind(options.model)
    io_dtype = _check_options(options, kind)
    trained = _training_metadata(options.model) if kind == "keras" else {}
    labels_file = options.labels or (options.model.parent / LABELS_NAME if kind == "keras" else None)
    labels = (_read_labels(labels_file) if labels_file and labels_file.is_file()
              else list(trained.get("labels", [])))
    if options.labels and not labels:
        raise EdgedetError("labels file not found", where=options.labels)
    if not labels:
        log("warning: no labels (no labels.txt beside the model, no --labels): the sidecar lists none and "
            "the daemon will report classes by index")
    normalization = dict(trained.get("normalization", MOBILENET_NORMALIZATION))
    # Calibrate on images prepared as in training; a model from elsewhere gets the daemon's defaults.
    recorded = trained.get("preprocess")
    known: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    spec = resolved(PreprocessSpec(**{k: v for k, v in known.items() if k in PreprocessSpec._fields}))

    import tensorflow as tf

    converter, size, keep_alive = _converter_for(kind, options)
    _configure(converter, options, io_dtype, size, normalization, spec, log)
    try:
        flatbuffer = converter.convert()
    except Exception as err:  # the converter reports MLIR errors as ConverterError with a long log
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EdgedetError(f"conversion failed: {first}", where=options.model) from None
    finally:
        del keep_alive
    try:
        options.out.write_bytes(flatbuffer)
    except OSError as err:
        raise EdgedetError(f"cannot write the model ({err.strerror})", where=options.out) from None
    info = inspect_flatbuffer(options.out)
    check_flatbuffer(info, options.quantization, io_dtype, options.out)
    sidecar = build_sidecar(
        architecture=options.architecture or trained.get("architecture"),
        alpha=options.alpha if options.alpha is not None else trained.get("alpha"),
        input_size=[int(size[0]), int(size[1])],
        labels=labels,
        quantization=options.quantization,
        io_dtype=io_dtype,
        min_runtime=info.min_runtime,
        tool_versions={"tensorflow": tf.__version__, "edgedet": edgedet.__version__},
        source_model=str(options.model),
        normalization=normalization,
        preprocess=spec.as_dict(),
    )
    sidecar_file = write_sidecar(options.out, sidecar)
    log(f"wrote {options.out} ({options.out.stat().st_size} bytes, {options.quantization}, I/O {io_dtype}, "
        f"input {info.inputs[0].shape}) and {sidecar_file.name}; minimum runtime {info.min_runtime}")
    log("ops: " + ", ".join(f"{name} v{version}" for name, version in info.ops))
    command = edgetpu_command(options.out) if options.quantization == "int8" else None
    compile_log = None
    if command:
        if shutil.which(command[0]):
            compile_log = options.out.with_name(options.out.stem + "_edgetpu.log")
            run = subprocess.run(command, capture_output=True, text=True, check=False)
            compile_log.write_text(run.stdout + run.stderr)
            log(f"edgetpu_compiler exit {run.returncode}; log in {compile_log}")
        else:
            log("edgetpu_compiler is not on PATH; compile for the Edge TPU on a Debian x86_64 host with: "
                + " ".join(command))
    return ConvertResult(options.out, sidecar_file, sidecar, info, command, compile_log)
