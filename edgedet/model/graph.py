"""Parameters and multiply-accumulates (MACs) read from a TFLite graph.

What is counted, and why:

* MACs: one multiply-accumulate per filter tap per output element of the operators that carry the
  network's arithmetic, i.e. ``CONV_2D`` (out_elements x kh x kw x in_channels), ``DEPTHWISE_CONV_2D``
  (out_elements x kh x kw), ``FULLY_CONNECTED`` (out_elements x in_features) and ``TRANSPOSE_CONV``
  (in_elements x kh x kw x out_channels). This is the convention of the MobileNet papers and of
  TensorFlow's published tables. Pooling and ``MEAN`` (additions, no weights), element-wise ``ADD``,
  activations, softmax and the bias addition are *not* counted: they are small and the published figures
  leave them out too.
* Parameters: the elements of the weight and bias tensors of those same operators (batch normalisation is
  already folded into them by the converter). Other constant tensors -- a ``RESHAPE``'s target shape, the
  quantization tables, lookup tables -- are not learned parameters and are reported separately as
  ``other_constant_elements`` so nothing is hidden.
* A model compiled for the Edge TPU keeps its layers inside an opaque ``edgetpu-custom-op``: its MACs and
  parameters cannot be read from the file. They are reported as ``None`` with the opaque operator named;
  count the CPU build of the same model instead.

The flatbuffer is parsed with the ``tflite`` package (the generated schema bindings), not the interpreter,
so inspection needs no runtime and allocates no tensors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgedet.errors import ModelError

# Builtin operator codes from the TFLite schema (tflite.BuiltinOperator); spelled out here so a reader sees
# exactly which operators count.
CONV_2D = 3
DEPTHWISE_CONV_2D = 4
FULLY_CONNECTED = 9
TRANSPOSE_CONV = 67
CUSTOM = 32
# The first 127 builtin codes also live in the deprecated int8 field; newer files put larger codes only in
# the int32 field (schema v3a), so the effective code is the larger of the two.
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127

MAC_OPERATORS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"


@dataclass
class GraphStats:
    """What the graph says about a model's size and cost."""

    macs: int | None
    params: int | None
    other_constant_elements: int
    operator_counts: dict[str, int]
    opaque_operators: list[str] = field(default_factory=list)
    input_shape: list[int] = field(default_factory=list)
    input_dtype: str = ""
    output_shape: list[int] = field(default_factory=list)

    @property
    def compiled_for_edgetpu(self) -> bool:
        return EDGETPU_CUSTOM_OP in self.opaque_operators

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _operator_names() -> dict[int, str]:
    from tflite.BuiltinOperator import BuiltinOperator

    return {value: name for name, value in vars(BuiltinOperator).items() if not name.startswith("_")}


def _dtype_names() -> dict[int, str]:
    from tflite.TensorType import TensorType

    return {value: name.lower() for name, value in vars(TensorType).items() if not name.startswith("_")}


def _load_model(source: str | Path | bytes) -> Any:
    import tflite

    where = None if isinstance(source, (bytes, bytearray)) else Path(source)
    if where is not None:
        try:
            buffer = where.read_bytes()
        except FileNotFoundError:
            raise ModelError("model file not found", where=where, fix="check the path") from None
        except OSError as err:
            raise ModelError(f"cannot read the model ({err.strerror})", where=where) from None
    else:
        buffer = bytes(source)
    # Bytes 4..8 hold the file identifier "TFL3"; anything else is not a TFLite flatbuffer, and the generated
    # bindings would read garbage offsets from it rather than fail cleanly.
    if len(buffer) < 8 or buffer[4:8] != b"TFL3":
        raise ModelError("not a TFLite model (no TFL3 identifier)", where=where or "model",
                         fix="pass a .tflite file")
    try:
        return tflite.Model.GetRootAsModel(buffer, 0)
    except Exception as err:  # the bindings raise assorted struct/index errors on a damaged file
        raise ModelError(f"damaged TFLite model ({err})", where=where or "model") from None


def _elements(shape: np.ndarray | None) -> int:
    return int(np.prod(shape)) if shape is not None and len(shape) else 0


def inspect_graph(source: str | Path | bytes) -> GraphStats:
    """Count MACs and parameters of a TFLite model given as a path or the file's bytes."""
    model = _load_model(source)
    op_names = _operator_names()
    dtype_names = _dtype_names()
    macs = 0
    params = 0
    operator_counts: Counter[str] = Counter()
    opaque: list[str] = []
    parameter_tensors: set[tuple[int, int]] = set()
    constant_tensors: dict[tuple[int, int], int] = {}

    for sg_index in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(sg_index)

        def shape_of(tensor_index: int, subgraph: Any = subgraph) -> np.ndarray | None:
            if tensor_index < 0:  # -1 marks an omitted optional input (e.g. no bias)
                return None
            return subgraph.Tensors(tensor_index).ShapeAsNumpy()

        for t_index in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t_index)
            buffer = model.Buffers(tensor.Buffer())
            # A constant tensor has non-empty data in its buffer (or, in files over 2 GB, an offset).
            has_data = buffer is not None and (buffer.DataLength() > 0 or buffer.Offset() > 1)
            if has_data:
                constant_tensors[(sg_index, t_index)] = _elements(tensor.ShapeAsNumpy())

        for op_index in range(subgraph.OperatorsLength()):
            operator = subgraph.Operators(op_index)
            code_entry = model.OperatorCodes(operator.OpcodeIndex())
            code = max(code_entry.BuiltinCode(), code_entry.DeprecatedBuiltinCode())
            name = op_names.get(code, f"OP_{code}")
            if code == CUSTOM:
                name = (code_entry.CustomCode() or b"custom").decode("utf-8", "replace")
                opaque.append(name)
            operator_counts[name] += 1
            inputs = [int(i) for i in operator.InputsAsNumpy()] if operator.InputsLength() else []
            outputs = [int(i) for i in operator.OutputsAsNumpy()] if operator.OutputsLength() else []
            out_elements = _elements(shape_of(outputs[0])) if outputs else 0

            if code == CONV_2D:  # filter [out_c, kh, kw, in_c]
                weights = shape_of(inputs[1])
                macs += out_elements * _elements(weights[1:])
                weight_inputs = inputs[1:3]
            elif code == DEPTHWISE_CONV_2D:  # filter [1, kh, kw, in_c * multiplier]
                weights = shape_of(inputs[1])
                macs += out_elements * int(weights[1]) * int(weights[2])
                weight_inputs = inputs[1:3]
            elif code == FULLY_CONNECTED:  # weights [units, in_features]
                weights = shape_of(inputs[1])
                macs += out_elements * int(weights[-1])
                weight_inputs = inputs[1:3]
            elif code == TRANSPOSE_CONV:  # inputs: output_shape, filter [out_c, kh, kw, in_c], input, bias
                weights = shape_of(inputs[1])
                data_in = shape_of(inputs[2])
                macs += _elements(data_in) * int(weights[0]) * int(weights[1]) * int(weights[2])
                weight_inputs = [inputs[1], *inputs[3:4]]
            else:
                continue
            for t_index in weight_inputs:
                # A weight tensor shared by two operators is one set of parameters, counted once.
                if t_index >= 0 and (sg_index, t_index) not in parameter_tensors:
                    parameter_tensors.add((sg_index, t_index))
                    params += _elements(shape_of(t_index))

    other_constants = sum(n for key, n in constant_tensors.items() if key not in parameter_tensors)
    main = model.Subgraphs(0)
    first_input = main.Tensors(int(main.Inputs(0))) if main.InputsLength() else None
    first_output = main.Tensors(int(main.Outputs(0))) if main.OutputsLength() else None
    hidden = EDGETPU_CUSTOM_OP in opaque
    return GraphStats(
        macs=None if hidden else macs,
        params=None if hidden else params,
        other_constant_elements=other_constants,
        operator_counts=dict(operator_counts),
        opaque_operators=sorted(set(opaque)),
        input_shape=[int(d) for d in first_input.ShapeAsNumpy()] if first_input is not None else [],
        input_dtype=dtype_names.get(first_input.Type(), "?") if first_input is not None else "",
        output_shape=[int(d) for d in first_output.ShapeAsNumpy()] if first_output is not None else [],
    )
