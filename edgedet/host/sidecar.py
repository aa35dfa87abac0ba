"""The metadata sidecar (``foo.json`` beside ``foo.tflite``) and a look inside a TFLite flatbuffer.

Deliberately free of TensorFlow: the flatbuffer is read with the ``tflite`` schema package, so the same
checks (static batch, op list and versions, minimum runtime) work wherever the daemon runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import tflite

from edgedet.errors import EdgedetError
from edgedet.model.config import PREPROCESS_DEFAULTS
from edgedet.timefmt import iso_utc

SIDECAR_FORMAT = "edgedet-sidecar/1"
# real = (pixel - mean) / std for pixels in 0..255 RGB: the [-1, 1] range every Keras MobileNet expects.
MOBILENET_NORMALIZATION = {"mean": 127.5, "std": 127.5}
# The daemon's defaults (model.preprocess), for models whose preparation is not otherwise known.
DEFAULT_PREPROCESS = {**PREPROCESS_DEFAULTS, "roi": None}

def _enum_names(enum: type) -> dict[int, str]:
    return {value: name for name, value in vars(enum).items() if not name.startswith("_")}


_TENSOR_TYPE_NAMES = _enum_names(tflite.TensorType)
_BUILTIN_NAMES = _enum_names(tflite.BuiltinOperator)


class TensorInfo(NamedTuple):
    name: str
    shape: list[int]
    shape_signature: list[int]  # -1 marks a dynamic dimension
    dtype: str  # lower-case TFLite type name: uint8, int8, float32, ...


class FlatbufferInfo(NamedTuple):
    ops: list[tuple[str, int]]  # (builtin or custom name, version), one per operator code, sorted
    custom_ops: list[str]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    tensor_dtypes: set[str]  # every tensor type present in the graph
    min_runtime: str | None  # written by the converter into the "min_runtime_version" metadata


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def _tensor(subgraph: Any, index: int) -> TensorInfo:
    tensor = subgraph.Tensors(index)
    shape = [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
    signature = [int(d) for d in tensor.ShapeSignatureAsNumpy()] if tensor.ShapeSignatureLength() else shape
    return TensorInfo(tensor.Name().decode(), shape, signature, _TENSOR_TYPE_NAMES[tensor.Type()].lower())


def inspect_flatbuffer(path: Path) -> FlatbufferInfo:
    """Read op codes, I/O tensors and the minimum runtime version out of a ``.tflite`` file."""
    data = Path(path).read_bytes()
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        ops: set[tuple[str, int]] = set()
        custom: list[str] = []
        for i in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(i)
            # Codes above 127 live only in BuiltinCode; older files only fill the deprecated byte.
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = _BUILTIN_NAMES.get(builtin, str(builtin))
            if name == "CUSTOM":
                name = (code.CustomCode() or b"?").decode()
                custom.append(name)
            ops.add((name, int(code.Version())))
        subgraph = model.Subgraphs(0)
        inputs = [_tensor(subgraph, int(i)) for i in subgraph.InputsAsNumpy()]
        outputs = [_tensor(subgraph, int(i)) for i in subgraph.OutputsAsNumpy()]
        dtypes = {_TENSOR_TYPE_NAMES[subgraph.Tensors(i).Type()].lower()
                  for i in range(subgraph.TensorsLength())}
        min_runtime = None
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == b"min_runtime_version":
                raw = model.Buffers(entry.Buffer()).DataAsNumpy()
                min_runtime = bytes(raw).split(b"\0", 1)[0].decode() or None
    except Exception as err:  # a truncated or foreign file fails deep inside the flatbuffer accessors
        raise EdgedetError(f"not a readable TFLite flatbuffer ({type(err).__name__}: {err})",
                           where=path) from None
    return FlatbufferInfo(sorted(ops), custom, inputs, outputs, dtypes, min_runtime)


def build_sidecar(*, architecture: str | None, alpha: float | None, input_size: list[int],
                  labels: list[str], quantization: str, io_dtype: str, min_runtime: str | None,
                  tool_versions: dict[str, str], source_model: str,
                  normalization: dict[str, float] | None = None,
                  preprocess: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sidecar dictionary in the field order of the contract.

    ``preprocess`` is how the images were prepared (the daemon's model.preprocess keys resize, crop,
    backend, roi); the daemon uses it wherever its config leaves those keys unset.
    """
    return {
        "format": SIDECAR_FORMAT,
        "architecture": architecture,
        "alpha": alpha,
        "input_size": list(input_size),
        "normalization": dict(normalization or MOBILENET_NORMALIZATION),
        "preprocess": dict(preprocess or DEFAULT_PREPROCESS),
        "labels": list(labels),
        "quantization": quantization,
        "io_dtype": io_dtype,
        "min_runtime": min_runtime,
        "tool_versions": dict(tool_versions),
        "source_model": source_model,
        "created": iso_utc(time.time()),
    }


def write_sidecar(model_path: Path, sidecar: dict[str, Any]) -> Path:
    path = sidecar_path(model_path)
    try:
        path.write_text(json.dumps(sidecar, indent=2) + "\n")
    except OSError as err:
        raise EdgedetError(f"cannot write the sidecar ({err.strerror})", where=path,
                           fix="choose a writable output path") from None
    return path


def read_sidecar(model_path: Path) -> dict[str, Any]:
    path = sidecar_path(model_path)
    try:
        sidecar = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgedetError("no sidecar beside the model", where=path,
                           fix="convert the model with `edgedet-host convert`") from None
    except (OSError, ValueError) as err:
        raise EdgedetError(f"unreadable sidecar ({err})", where=path) from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise EdgedetError(f"not an {SIDECAR_FORMAT} sidecar", where=path)
    return sidecar
