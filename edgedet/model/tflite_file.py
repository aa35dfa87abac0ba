"""Read and validate a .tflite file without running it.

The flatbuffer is parsed before an interpreter touches it, so a model can be checked, described (``edgedet
models info``) and refused with a clear message: a truncated or foreign file must never reach the C++ loader.
The fields are read straight from the flatbuffer's tables by their index in TensorFlow's ``schema.fbs``
(flatbuffers never renumber a field). The ``tflite`` package, generated from that schema, gives only the enum
names (:func:`schema_enum`): its ``__init__`` imports all of its modules, a few MB of the daemon's memory
(README, performance); ``tests/test_graph.py`` checks this reader against the package's accessors. Labels and
normalization stored in the TFLite metadata are read here too (labels are a zip archive appended to the
flatbuffer, normalization is a ``NormalizationOptions`` process unit of the input tensor).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import struct
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import flatbuffers
import numpy as np
from flatbuffers import number_types as fb
from flatbuffers.table import Table

from edgedet.errors import ModelError

EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
SIDECAR_FORMAT = "edgedet-sidecar/1"


@functools.cache
def schema_enum(name: str) -> dict[str, int]:
    """One enum of the TFLite schema (``TensorType``, ``BuiltinOperator``): name -> value, from the ``tflite``
    package's generated module for it alone (it imports nothing), not through the package's ``__init__``."""
    spec = importlib.util.find_spec("tflite")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the tflite package (pip install tflite) is missing")
    path = Path(next(iter(spec.submodule_search_locations))) / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"edgedet._tflite_schema_{name}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = ModuleType(module_spec.name)
    module_spec.loader.exec_module(module)
    return {k: v for k, v in vars(getattr(module, name)).items() if not k.startswith("_")}


_TENSOR_TYPES = {v: k for k, v in schema_enum("TensorType").items()}
_BUILTIN_OPERATORS = schema_enum("BuiltinOperator")
_OP_NAMES = {v: k for k, v in _BUILTIN_OPERATORS.items()}
_CUSTOM = _BUILTIN_OPERATORS["CUSTOM"]
_NUMPY_TYPES = {"FLOAT32": np.float32, "UINT8": np.uint8, "INT8": np.int8}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # TFLite type name: FLOAT32, UINT8, INT8, ...
    scale: float = 0.0
    zero_point: int = 0
    dynamic_dims: tuple[int, ...] = ()  # indices whose shape signature is -1

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype.lower(),
                "quantization": {"scale": self.scale, "zero_point": self.zero_point} if self.scale else None}


@dataclass(frozen=True)
class Operator:
    name: str  # builtin name (CONV_2D) or custom code (edgetpu-custom-op)
    version: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass
class TfliteFile:
    """A parsed, validated-to-be-readable TFLite model file."""

    path: Path
    # The size and digest, not the bytes: the interpreter maps the file itself, and a copy held here for the
    # daemon's lifetime would double the model's share of its memory.
    size_bytes: int
    sha256: str = field(repr=False)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    tensors: list[TensorSpec] = field(repr=False)
    operators: list[Operator] = field(repr=False)
    constant_tensors: set[int] = field(repr=False)
    description: str = ""
    metadata_normalization: Optional[tuple[list[float], list[float]]] = None
    embedded_labels: Optional[list[str]] = None

    @cached_property
    def name(self) -> str:  # cached: the frame loop names the model in every result
        return self.path.stem

    @property
    def is_edgetpu(self) -> bool:
        return any(op.name == EDGETPU_CUSTOM_OP for op in self.operators)

    def op_counts(self) -> dict[str, int]:
        return dict(Counter(op.name for op in self.operators))

    def op_versions(self) -> dict[str, int]:
        versions: dict[str, int] = {}
        for op in self.operators:
            versions[op.name] = max(versions.get(op.name, 0), op.version)
        return versions

    def sidecar_path(self) -> Path:
        return self.path.with_suffix(".json")

    @cached_property
    def sidecar(self) -> Optional[dict[str, Any]]:
        """The host script's JSON written beside the model (normalization, labels, provenance), if any."""
        path = self.sidecar_path()
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"sidecar is not valid JSON ({exc})", where=path,
                             fix="regenerate it with edgedet-host convert, or delete it") from None
        if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
            return None  # some other tool's JSON that happens to share the name
        return data

    def validate_classifier(self) -> None:
        """One NHWC 3-channel image input and one class-score output, float32/uint8/int8 tensors."""
        where = self.path
        if len(self.inputs) != 1:
            raise ModelError(f"model has {len(self.inputs)} inputs; edgedet needs exactly one image input "
                             "(1xHxWx3)", where=where, fix="use an image classification model such as MobileNet")
        if len(self.outputs) != 1:
            raise ModelError(f"model has {len(self.outputs)} outputs; edgedet needs exactly one class-score "
                             "output", where=where,
                             fix="use an image classification model, not a detector or a multi-head model")
        inp, out = self.inputs[0], self.outputs[0]
        if len(inp.shape) != 4 or inp.shape[3] != 3 or inp.shape[0] != 1 or min(inp.shape) < 1:
            raise ModelError(f"input '{inp.name}' has shape {list(inp.shape)}; edgedet needs 1xHxWx3 (NHWC, RGB)",
                             where=where, fix="export the model with a 1xHxWx3 input")
        for kind, spec in (("input", inp), ("output", out)):
            if spec.dtype not in _NUMPY_TYPES:
                raise ModelError(f"{kind} '{spec.name}' is {spec.dtype.lower()}; edgedet supports float32, uint8 "
                                 "and int8", where=where, fix="convert with --quant int8 or float32")
            if spec.dtype != "FLOAT32" and not spec.scale:
                raise ModelError(f"{kind} '{spec.name}' is {spec.dtype.lower()} without quantization parameters",
                                 where=where, fix="reconvert the model with full-integer quantization")
        classes = int(np.prod(out.shape)) if out.shape else 0
        if not out.shape or any(d != 1 for d in out.shape[:-1]) or classes < 2:
            raise ModelError(f"output '{out.name}' has shape {list(out.shape)}, not a vector of class scores "
                             "(1xN)", where=where, fix="use an image classification model")


def _field_pos(tab: Table, index: int) -> int:
    return tab.Offset(4 + 2 * index)


def _sub_tables(tab: Table, index: int) -> list[Table]:
    off = _field_pos(tab, index)
    if not off:
        return []
    start, count = tab.Vector(off), tab.VectorLen(off)
    return [Table(tab.Bytes, tab.Indirect(start + 4 * i)) for i in range(count)]


def _sub_table(tab: Table, index: int) -> Optional[Table]:
    off = _field_pos(tab, index)
    return Table(tab.Bytes, tab.Indirect(off + tab.Pos)) if off else None


def _numbers(tab: Table, index: int, flags: Any = fb.Int32Flags) -> list[Any]:
    """A vector of scalars (int32 unless ``flags`` says otherwise); [] when absent."""
    off = _field_pos(tab, index)
    if not off:
        return []
    start, count = tab.Vector(off), tab.VectorLen(off)
    return [tab.Get(flags, start + flags.bytewidth * i) for i in range(count)]


def _floats(tab: Table, index: int) -> list[float]:
    return _numbers(tab, index, fb.Float32Flags)


def _scalar(tab: Table, index: int, flags: Any, default: int = 0) -> int:
    off = _field_pos(tab, index)
    return tab.Get(flags, off + tab.Pos) if off else default


def _u8(tab: Table, index: int) -> int:
    return _scalar(tab, index, fb.Uint8Flags)


def _string(tab: Table, index: int) -> Optional[bytes]:
    off = _field_pos(tab, index)
    return tab.String(off + tab.Pos) if off else None


def _vector_span(tab: Table, index: int) -> tuple[int, int]:
    """Where a [ubyte] vector lies in the buffer: (start, length); (0, 0) when absent."""
    off = _field_pos(tab, index)
    return (tab.Vector(off), tab.VectorLen(off)) if off else (0, 0)


def _metadata_normalization(buf: bytes) -> Optional[tuple[list[float], list[float]]]:
    """NormalizationOptions(mean, std) of the first input in a TFLite ModelMetadata flatbuffer."""
    root = Table(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
    for subgraph in _sub_tables(root, 3):  # ModelMetadata.subgraph_metadata
        for tensor in _sub_tables(subgraph, 2)[:1]:  # SubGraphMetadata.input_tensor_metadata
            for unit in _sub_tables(tensor, 4):  # TensorMetadata.process_units
                options = _sub_table(unit, 1)
                if _u8(unit, 0) == 1 and options is not None:  # ProcessUnitOptions.NormalizationOptions
                    mean, std = _floats(options, 0), _floats(options, 1)
                    if mean and std:
                        return mean, std
    return None


def _embedded_labels(data: bytes) -> Optional[list[str]]:
    """Labels from the zip of associated files that TFLite metadata appends to the model."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = [n for n in archive.namelist() if n.lower().endswith(".txt")]
            preferred = [n for n in names if "label" in n.lower()] or names
            if not preferred:
                return None
            text = archive.read(preferred[0]).decode("utf-8", errors="replace")
    except (zipfile.BadZipFile, OSError, KeyError):
        return None
    from edgedet.model.labels import parse_labels

    return parse_labels(text) or None


def _has_broken_archive(data: bytes) -> bool:
    """A zip local-file header (metadata associated files) without a readable zip: the tail was cut off."""
    start = data.find(b"PK\x03\x04")
    while start != -1:
        header = data[start:start + 30]
        if len(header) == 30:
            name_len = struct.unpack_from("<H", header, 26)[0]
            name = data[start + 30:start + 30 + name_len]
            if 0 < name_len < 256 and len(name) == name_len and name.isascii() and b"." in name:
                return not zipfile.is_zipfile(io.BytesIO(data))
        start = data.find(b"PK\x03\x04", start + 4)
    return False


def _tensor_spec(t: Table) -> TensorSpec:
    # schema.fbs, table Tensor: shape 0, type 1, buffer 2, name 3, quantization 4, shape_signature 7.
    # QuantizationParameters: scale 2, zero_point 3.
    shape = tuple(_numbers(t, 0))
    signature = _numbers(t, 7)
    scale, zero_point = 0.0, 0
    q = _sub_table(t, 4)
    scales = _floats(q, 2) if q is not None else []
    if q is not None and len(scales) == 1:
        zero_points = _numbers(q, 3, fb.Int64Flags)
        scale, zero_point = float(scales[0]), int(zero_points[0]) if zero_points else 0
    name = _string(t, 3)
    kind = _scalar(t, 1, fb.Int8Flags)
    return TensorSpec(name=name.decode("utf-8", errors="replace") if name else "", shape=shape,
                      dtype=_TENSOR_TYPES.get(kind, f"TYPE_{kind}"), scale=scale, zero_point=zero_point,
                      dynamic_dims=tuple(i for i, d in enumerate(signature) if d == -1))


def read_tflite(path: str | Path) -> TfliteFile:
    """Parse a model file; every failure is a ModelError naming the file and what to do."""
    path = Path(path)
    fix_path = "check model.path (or --model)"
    if not path.exists():
        raise ModelError("model file not found", where=path, fix=fix_path)
    if path.is_dir():
        raise ModelError("is a directory, not a .tflite model file", where=path, fix=fix_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file ({exc.strerror})", where=path, fix="check its permissions") from None
    if not data:
        raise ModelError("model file is empty (0 bytes)", where=path,
                         fix="the copy or download failed; fetch the model again")
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError("not a TFLite model (no TFL3 flatbuffer identifier)", where=path,
                         fix="pass a .tflite file converted with the TFLite converter")
    try:
        return _parse(path, data)
    except ModelError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ModelError(f"truncated or corrupt TFLite file ({type(exc).__name__})", where=path,
                         fix="the copy or download is incomplete; fetch the model again") from None


def _parse(path: Path, data: bytes) -> TfliteFile:
    # schema.fbs, table Model: operator_codes 1, subgraphs 2, description 3, buffers 4, metadata 6.
    size = len(data)
    model = Table(data, flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0))
    subgraphs = _sub_tables(model, 2)
    if not subgraphs:
        raise ModelError("model has no subgraph", where=path, fix="reconvert the model")
    # Every buffer must lie inside the file: a truncated download fails here instead of in the C++ loader.
    # Only where each buffer lies is kept (weights are not copied): a tensor is constant when its buffer has
    # data, and the metadata buffer is read from the file's bytes.
    spans: list[tuple[int, int]] = []
    for i, buffer in enumerate(_sub_tables(model, 4)):
        # Buffer: data 0 (inside the flatbuffer), or offset 1 and size 2 (after it, in models over 2 GB).
        offset = _scalar(buffer, 1, fb.Uint64Flags)
        start, length = (offset, _scalar(buffer, 2, fb.Uint64Flags)) if offset > 1 else _vector_span(buffer, 0)
        if length and start + length > size:
            raise ModelError(f"truncated: buffer {i} ends at byte {start + length} of a {size}-byte file",
                             where=path, fix="fetch the model again")
        spans.append((start, start + length) if length else (0, 0))
    codes = []
    for code in _sub_tables(model, 1):
        # OperatorCode: deprecated_builtin_code 0 (int8), custom_code 1, version 2 (default 1), builtin_code 3.
        builtin = max(_scalar(code, 3, fb.Int32Flags), _scalar(code, 0, fb.Int8Flags))
        name = (_string(code, 1) or b"").decode() if builtin == _CUSTOM else _OP_NAMES.get(builtin,
                                                                                         f"BUILTIN_{builtin}")
        codes.append((name, _scalar(code, 2, fb.Int32Flags, 1)))
    # SubGraph: tensors 0, inputs 1, outputs 2, operators 3. Operator: opcode_index 0, inputs 1, outputs 2.
    graph = subgraphs[0]
    tensor_tables = _sub_tables(graph, 0)
    tensors = [_tensor_spec(t) for t in tensor_tables]
    constant = set()
    for i, t in enumerate(tensor_tables):
        buffer_index = _scalar(t, 2, fb.Uint32Flags)
        if buffer_index < len(spans) and _nonempty(spans[buffer_index]):
            constant.add(i)
    operators = []
    for op in _sub_tables(graph, 3):
        name, version = codes[_scalar(op, 0, fb.Uint32Flags)]
        operators.append(Operator(name, version, tuple(_numbers(op, 1)), tuple(_numbers(op, 2))))
    inputs = [tensors[i] for i in _numbers(graph, 1)]
    outputs = [tensors[i] for i in _numbers(graph, 2)]
    normalization = None
    for meta in _sub_tables(model, 6):
        # Metadata: name 0, buffer 1.
        buffer_index = _scalar(meta, 1, fb.Uint32Flags)
        if _string(meta, 0) == b"TFLITE_METADATA" and buffer_index < len(spans) and _nonempty(spans[buffer_index]):
            start, end = spans[buffer_index]
            try:
                normalization = _metadata_normalization(data[start:end])
            except (struct.error, IndexError, ValueError):
                normalization = None  # unreadable metadata is not fatal: the model itself is fine
    if _has_broken_archive(data):
        raise ModelError("truncated: the model's appended metadata archive (labels) is incomplete", where=path,
                         fix="the copy or download is incomplete; fetch the model again")
    description = (_string(model, 3) or b"").decode("utf-8", errors="replace")
    return TfliteFile(path=path, size_bytes=size, sha256=hashlib.sha256(data).hexdigest(), inputs=inputs,
                      outputs=outputs, tensors=tensors, operators=operators, constant_tensors=constant,
                      description=description, metadata_normalization=normalization,
                      embedded_labels=_embedded_labels(data))


def _nonempty(span: tuple[int, int]) -> bool:
    return span[1] > span[0]


def numpy_dtype(spec: TensorSpec) -> np.dtype:
    return np.dtype(_NUMPY_TYPES[spec.dtype])
