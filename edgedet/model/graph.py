"""Parameters and multiply-accumulates (MACs) read from a TFLite graph.

What is counted, and why:

* MACs: one multiply-accumulate per filter tap per output element of the operators that carry the
  network's arithmetic, i.e. ``CONV_2D`` (out_elements x kh x kw x in_channels), ``DEPTHWISE_CONV_2D``
  (out_elements x kh x kw), ``FULLY_CONNECTED`` (out_elements x in_features) and ``TRANSPOSE_CONV``
  (in_elements x kh x kw x out_channels). This is the convention of the MobileNet papers and of
  TensorFlow's published tables. Pooling and ``MEAN`` (additions, no weights), element-wise ``ADD``,
  activations, softmax and the bias addition are *not* counted: they are small and the published figures
  leave them out too. Checked against TF-slim's ``mobilenet_v1.md`` table (whole millions): this count gives
  exactly its 569/418/291/186 M for V1 1.0 at 224/192/160/128, and 13.57 M -> "14" for 0.25/128. Counting the
  bias additions too would give 13.99 M there but 573.8 M for 1.0/224, so the table does not count them.
* Parameters: the elements of the weight and bias tensors of those same operators (batch normalisation is
  already folded into them by the converter). Other constant tensors -- a ``RESHAPE``'s target shape, the
  quantization tables, lookup tables -- are not learned parameters and are reported separately as
  ``other_constant_elements`` so nothing is hidden.
* A model compiled for the Edge TPU keeps its layers inside an opaque ``edgetpu-custom-op``: its MACs and
  parameters cannot be read from the file. They are reported as ``None`` with the opaque operator named;
  count the CPU build of the same model instead.

The operators and tensors come from :func:`edgedet.model.tflite_file.read_tflite` (the flatbuffer read
by its schema, not by the interpreter), so inspection needs no runtime and allocates no
tensors. Only the main subgraph is counted: a classifier's layers all live there (other subgraphs hold
control-flow bodies).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from edgedet.model.tflite_file import EDGETPU_CUSTOM_OP, TfliteFile, read_tflite, schema_enum

MAC_OPERATORS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
_BUILTIN_NAMES = frozenset(schema_enum("BuiltinOperator"))


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


def _elements(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape)) if shape else 0


def inspect_graph(source: Union[str, Path, TfliteFile]) -> GraphStats:
    """Count MACs and parameters of a TFLite model given as a path or an already parsed file."""
    model = source if isinstance(source, TfliteFile) else read_tflite(source)
    tensors = model.tensors
    macs = 0
    params = 0
    opaque: list[str] = []
    parameter_tensors: set[int] = set()

    def shape_of(tensor_index: int) -> tuple[int, ...]:
        return tensors[tensor_index].shape

    for operator in model.operators:
        name, inputs, outputs = operator.name, operator.inputs, operator.outputs
        if name not in MAC_OPERATORS:
            # read_tflite names a custom operator by its custom code: its arithmetic is opaque to us.
            if name not in _BUILTIN_NAMES and not name.startswith("BUILTIN_"):
                opaque.append(name or "custom")
            continue
        out_elements = _elements(shape_of(outputs[0])) if outputs else 0
        weights = shape_of(inputs[1])
        if name == "CONV_2D":  # filter [out_c, kh, kw, in_c]
            macs += out_elements * _elements(weights[1:])
            weight_inputs = inputs[1:3]
        elif name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, in_c * multiplier]
            macs += out_elements * weights[1] * weights[2]
            weight_inputs = inputs[1:3]
        elif name == "FULLY_CONNECTED":  # weights [units, in_features]
            macs += out_elements * weights[-1]
            weight_inputs = inputs[1:3]
        else:  # TRANSPOSE_CONV inputs: output_shape, filter [out_c, kh, kw, in_c], input, bias
            macs += _elements(shape_of(inputs[2])) * weights[0] * weights[1] * weights[2]
            weight_inputs = (inputs[1], *inputs[3:4])
        for t_index in weight_inputs:
            # -1 marks an omitted optional input (no bias); a weight tensor shared by two operators is one
            # set of parameters, counted once.
            if t_index >= 0 and t_index not in parameter_tensors:
                parameter_tensors.add(t_index)
                params += _elements(shape_of(t_index))

    other_constants = sum(_elements(tensors[i].shape) for i in model.constant_tensors - parameter_tensors)
    hidden = EDGETPU_CUSTOM_OP in opaque
    first_input = model.inputs[0] if model.inputs else None
    first_output = model.outputs[0] if model.outputs else None
    return GraphStats(
        macs=None if hidden else macs,
        params=None if hidden else params,
        other_constant_elements=other_constants,
        operator_counts=model.op_counts(),
        opaque_operators=sorted(set(opaque)),
        input_shape=list(first_input.shape) if first_input else [],
        input_dtype=first_input.dtype.lower() if first_input else "",
        output_shape=list(first_output.shape) if first_output else [],
    )
