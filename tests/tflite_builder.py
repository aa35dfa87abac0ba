"""Build tiny, valid TFLite models in tests (no TensorFlow needed), with the ``tflite`` schema bindings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import flatbuffers
import numpy as np
import tflite

TYPES = {np.dtype(np.float32): tflite.TensorType.FLOAT32, np.dtype(np.uint8): tflite.TensorType.UINT8,
         np.dtype(np.int8): tflite.TensorType.INT8, np.dtype(np.int32): tflite.TensorType.INT32}


@dataclass
class T:
    name: str
    shape: tuple[int, ...]
    dtype: type = np.float32
    data: Optional[np.ndarray] = None  # constant tensor
    scale: float = 0.0
    zero_point: int = 0
    signature: Optional[tuple[int, ...]] = None  # shape_signature: -1 marks a dynamic dimension


@dataclass
class Op:
    code: int  # tflite.BuiltinOperator.X
    inputs: list[int]
    outputs: list[int]
    resize_half_pixel: Optional[bool] = None  # RESIZE_BILINEAR options
    extra: dict = field(default_factory=dict)


def _vector(b: flatbuffers.Builder, start_fn, items: list[int], prepend) -> int:
    start_fn(b, len(items))
    for item in reversed(items):
        prepend(item)
    return b.EndVector()


def build(tensors: list[T], ops: list[Op], inputs: list[int], outputs: list[int]) -> bytes:
    b = flatbuffers.Builder(1024)
    # buffers: 0 is the empty sentinel, then one per constant tensor
    buffer_data = [b""] + [t.data.tobytes() for t in tensors if t.data is not None]
    buffer_offsets = []
    for data in buffer_data:
        data_vec = b.CreateByteVector(data) if data else None
        tflite.BufferStart(b)
        if data_vec is not None:
            tflite.BufferAddData(b, data_vec)
        buffer_offsets.append(tflite.BufferEnd(b))
    tensor_offsets = []
    next_buffer = 1
    for t in tensors:
        name = b.CreateString(t.name)
        shape = _vector(b, tflite.TensorStartShapeVector, list(t.shape), b.PrependInt32)
        signature = (None if t.signature is None else
                     _vector(b, tflite.TensorStartShapeSignatureVector, list(t.signature), b.PrependInt32))
        quant = None
        if t.scale:
            scale = _vector(b, tflite.QuantizationParametersStartScaleVector, [t.scale], b.PrependFloat32)
            zp = _vector(b, tflite.QuantizationParametersStartZeroPointVector, [t.zero_point], b.PrependInt64)
            tflite.QuantizationParametersStart(b)
            tflite.QuantizationParametersAddScale(b, scale)
            tflite.QuantizationParametersAddZeroPoint(b, zp)
            quant = tflite.QuantizationParametersEnd(b)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        if signature is not None:
            tflite.TensorAddShapeSignature(b, signature)
        tflite.TensorAddType(b, TYPES[np.dtype(t.dtype)])
        tflite.TensorAddName(b, name)
        if quant is not None:
            tflite.TensorAddQuantization(b, quant)
        if t.data is not None:
            tflite.TensorAddBuffer(b, next_buffer)
            next_buffer += 1
        else:
            tflite.TensorAddBuffer(b, 0)
        tensor_offsets.append(tflite.TensorEnd(b))
    codes = sorted({op.code for op in ops})
    code_offsets = []
    for code in codes:
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddBuiltinCode(b, code)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tflite.OperatorCodeAddVersion(b, 1 if code != tflite.BuiltinOperator.RESIZE_BILINEAR else 3)
        code_offsets.append(tflite.OperatorCodeEnd(b))
    op_offsets = []
    for op in ops:
        ins = _vector(b, tflite.OperatorStartInputsVector, op.inputs, b.PrependInt32)
        outs = _vector(b, tflite.OperatorStartOutputsVector, op.outputs, b.PrependInt32)
        options = None
        if op.resize_half_pixel is not None:
            tflite.ResizeBilinearOptionsStart(b)
            tflite.ResizeBilinearOptionsAddHalfPixelCenters(b, op.resize_half_pixel)
            options = tflite.ResizeBilinearOptionsEnd(b)
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, codes.index(op.code))
        tflite.OperatorAddInputs(b, ins)
        tflite.OperatorAddOutputs(b, outs)
        if options is not None:
            tflite.OperatorAddBuiltinOptionsType(b, tflite.BuiltinOptions.ResizeBilinearOptions)
            tflite.OperatorAddBuiltinOptions(b, options)
        op_offsets.append(tflite.OperatorEnd(b))
    tensors_vec = _vector(b, tflite.SubGraphStartTensorsVector, tensor_offsets, b.PrependUOffsetTRelative)
    ops_vec = _vector(b, tflite.SubGraphStartOperatorsVector, op_offsets, b.PrependUOffsetTRelative)
    in_vec = _vector(b, tflite.SubGraphStartInputsVector, inputs, b.PrependInt32)
    out_vec = _vector(b, tflite.SubGraphStartOutputsVector, outputs, b.PrependInt32)
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensors_vec)
    tflite.SubGraphAddOperators(b, ops_vec)
    tflite.SubGraphAddInputs(b, in_vec)
    tflite.SubGraphAddOutputs(b, out_vec)
    subgraph = tflite.SubGraphEnd(b)
    subgraphs = _vector(b, tflite.ModelStartSubgraphsVector, [subgraph], b.PrependUOffsetTRelative)
    codes_vec = _vector(b, tflite.ModelStartOperatorCodesVector, code_offsets, b.PrependUOffsetTRelative)
    buffers_vec = _vector(b, tflite.ModelStartBuffersVector, buffer_offsets, b.PrependUOffsetTRelative)
    description = b.CreateString("edgedet test model")
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes_vec)
    tflite.ModelAddSubgraphs(b, subgraphs)
    tflite.ModelAddDescription(b, description)
    tflite.ModelAddBuffers(b, buffers_vec)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def two_input_model() -> bytes:
    """ADD of two 1x8x8x3 float images: valid TFLite, but two inputs."""
    add = tflite.BuiltinOperator.ADD
    return build([T("a", (1, 8, 8, 3)), T("b", (1, 8, 8, 3)), T("sum", (1, 8, 8, 3))],
                 [Op(add, [0, 1], [2])], inputs=[0, 1], outputs=[2])


def image_output_model() -> bytes:
    """One image input whose output is an image (ADD with itself), not a vector of class scores."""
    add = tflite.BuiltinOperator.ADD
    return build([T("image", (1, 8, 8, 3)), T("doubled", (1, 8, 8, 3))], [Op(add, [0, 0], [1])],
                 inputs=[0], outputs=[1])


def tiny_classifier(classes: int = 4, size: int = 8, dtype: type = np.float32) -> bytes:
    """1xSxSx3 -> RESIZE_BILINEAR to 1x1x1x3 ... -> RESHAPE to 1x3: a valid 'classifier' with 3 classes."""
    resize, reshape = tflite.BuiltinOperator.RESIZE_BILINEAR, tflite.BuiltinOperator.RESHAPE
    kwargs = {np.uint8: {"scale": 1 / 128, "zero_point": 128}, np.int8: {"scale": 1 / 128, "zero_point": 0}}.get(
        dtype, {})
    return build([T("image", (1, size, size, 3), dtype, **kwargs),
                  T("size", (2,), np.int32, data=np.array([1, 1], np.int32)),
                  T("pooled", (1, 1, 1, 3), dtype, **kwargs),
                  T("shape", (2,), np.int32, data=np.array([1, 3], np.int32)),
                  T("scores", (1, 3), dtype, **kwargs)],
                 [Op(resize, [0, 1], [2], resize_half_pixel=True), Op(reshape, [2, 3], [4])],
                 inputs=[0], outputs=[4])


def resize_model(in_h: int, in_w: int, out_h: int, out_w: int) -> bytes:
    """float32 1xHxWx3 -> RESIZE_BILINEAR(half_pixel_centers=True) -> 1xOHxOWx3: the reference resize."""
    resize = tflite.BuiltinOperator.RESIZE_BILINEAR
    return build([T("image", (1, in_h, in_w, 3)), T("size", (2,), np.int32, data=np.array([out_h, out_w], np.int32)),
                  T("resized", (1, out_h, out_w, 3))],
                 [Op(resize, [0, 1], [2], resize_half_pixel=True)], inputs=[0], outputs=[2])


def slow_classifier(work_side: int = 1500) -> bytes:
    """A genuinely slow 'classifier' (tens of ms): 1x8x8x3 -> resize to SIDE x SIDE -> resize to 1x1 -> 1x3."""
    resize, reshape = tflite.BuiltinOperator.RESIZE_BILINEAR, tflite.BuiltinOperator.RESHAPE
    return build([T("image", (1, 8, 8, 3)),
                  T("big_size", (2,), np.int32, data=np.array([work_side, work_side], np.int32)),
                  T("big", (1, work_side, work_side, 3)),
                  T("size", (2,), np.int32, data=np.array([1, 1], np.int32)),
                  T("pooled", (1, 1, 1, 3)),
                  T("shape", (2,), np.int32, data=np.array([1, 3], np.int32)),
                  T("scores", (1, 3))],
                 [Op(resize, [0, 1], [2], resize_half_pixel=True), Op(resize, [2, 3], [4], resize_half_pixel=True),
                  Op(reshape, [4, 5], [6])],
                 inputs=[0], outputs=[6])
