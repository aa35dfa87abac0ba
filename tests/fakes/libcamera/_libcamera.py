"""Fake ``libcamera._libcamera``: ColorSpace and Transform as the pybind11 binding defines them."""

from __future__ import annotations

from enum import Enum
from typing import Any

# ColorSpace::toString(): a standard space's name, else "primaries/transfer/encoding/range".
_PRIMARIES_NAMES = {"Raw": "RAW", "Smpte170m": "SMPTE170M", "Rec709": "Rec709", "Rec2020": "Rec2020"}
_TRANSFER_NAMES = {"Linear": "Linear", "Srgb": "sRGB", "Rec709": "Rec709"}
_ENCODING_NAMES = {"Null": "None", "Rec601": "Rec601", "Rec709": "Rec709", "Rec2020": "Rec2020"}
_RANGE_NAMES = {"Full": "Full", "Limited": "Limited"}


class ColorSpace:
    # pybind11 enums: str() is "Range.Full", .name "Full", .value the C++ enumerator's number.
    class Primaries(Enum):
        Raw = 0
        Smpte170m = 1
        Rec709 = 2
        Rec2020 = 3

    class TransferFunction(Enum):
        Linear = 0
        Srgb = 1
        Rec709 = 2

    class YcbcrEncoding(Enum):
        Null = 0  # C++ YcbcrEncoding::None
        Rec601 = 1
        Rec709 = 2
        Rec2020 = 3

    class Range(Enum):
        Full = 0
        Limited = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Two constructors: ColorSpace(other) copies; ColorSpace(primaries, transferFunction, ycbcrEncoding,
        # range) takes the four enums (pybind11 raises TypeError for anything else).
        if len(args) == 1 and not kwargs and isinstance(args[0], ColorSpace):
            other = args[0]
            fields = (other.primaries, other.transferFunction, other.ycbcrEncoding, other.range)
        else:
            names = ("primaries", "transferFunction", "ycbcrEncoding", "range")
            values = dict(zip(names, args)) | kwargs
            types = (ColorSpace.Primaries, ColorSpace.TransferFunction, ColorSpace.YcbcrEncoding,
                     ColorSpace.Range)
            if len(args) > 4 or set(values) != set(names) or \
                    not all(isinstance(values[n], t) for n, t in zip(names, types)):
                raise TypeError("__init__(): incompatible constructor arguments.")
            fields = tuple(values[n] for n in names)
        self.primaries, self.transferFunction, self.ycbcrEncoding, self.range = fields

    def _to_string(self) -> str:
        key = (self.primaries, self.transferFunction, self.ycbcrEncoding, self.range)
        for factory, name in _STANDARD:
            standard = factory()
            if key == (standard.primaries, standard.transferFunction, standard.ycbcrEncoding, standard.range):
                return name
        return "/".join((_PRIMARIES_NAMES[self.primaries.name], _TRANSFER_NAMES[self.transferFunction.name],
                         _ENCODING_NAMES[self.ycbcrEncoding.name], _RANGE_NAMES[self.range.name]))

    def __str__(self) -> str:
        return "<libcamera.ColorSpace '" + self._to_string() + "'>"

    @staticmethod
    def Raw() -> ColorSpace:
        return ColorSpace(ColorSpace.Primaries.Raw, ColorSpace.TransferFunction.Linear,
                          ColorSpace.YcbcrEncoding.Null, ColorSpace.Range.Full)

    @staticmethod
    def Srgb() -> ColorSpace:
        return ColorSpace(ColorSpace.Primaries.Rec709, ColorSpace.TransferFunction.Srgb,
                          ColorSpace.YcbcrEncoding.Null, ColorSpace.Range.Full)

    @staticmethod
    def Sycc() -> ColorSpace:
        return ColorSpace(ColorSpace.Primaries.Rec709, ColorSpace.TransferFunction.Srgb,
                          ColorSpace.YcbcrEncoding.Rec601, ColorSpace.Range.Full)

    @staticmethod
    def Smpte170m() -> ColorSpace:
        return ColorSpace(ColorSpace.Primaries.Smpte170m, ColorSpace.TransferFunction.Rec709,
                          ColorSpace.YcbcrEncoding.Rec601, ColorSpace.Range.Limited)

    @staticmethod
    def Rec709() -> ColorSpace:
        return ColorSpace(ColorSpace.Primaries.Rec709, ColorSpace.TransferFunction.Rec709,
                          ColorSpace.YcbcrEncoding.Rec709, ColorSpace.Range.Limited)

    @staticmethod
    def Rec2020() -> ColorSpace:
        return ColorSpace(ColorSpace.Primaries.Rec2020, ColorSpace.TransferFunction.Rec709,
                          ColorSpace.YcbcrEncoding.Rec2020, ColorSpace.Range.Limited)


# libcamera's colorSpaceNames table, in its order.
_STANDARD = ((ColorSpace.Raw, "RAW"), (ColorSpace.Srgb, "sRGB"), (ColorSpace.Sycc, "sYCC"),
             (ColorSpace.Smpte170m, "SMPTE170M"), (ColorSpace.Rec709, "Rec709"), (ColorSpace.Rec2020, "Rec2020"))


class Transform:
    def __init__(self, rotation: int = 0, hflip: bool = False, vflip: bool = False,
                 transpose: bool = False) -> None:
        if rotation % 360 not in (0, 90, 180, 270):
            raise ValueError("Invalid rotation")  # C++ std::invalid_argument, which pybind11 maps to ValueError
        # libcamera's Transform bits: HFlip 1, VFlip 2, Transpose 4; Rot90 = VFlip|Transpose, Rot270 = HFlip|Transpose.
        bits = {0: 0, 90: 6, 180: 3, 270: 5}[rotation % 360]
        bits ^= (1 if hflip else 0) | (2 if vflip else 0) | (4 if transpose else 0)
        self.hflip, self.vflip, self.transpose = bool(bits & 1), bool(bits & 2), bool(bits & 4)

    def __str__(self) -> str:
        bits = int(self.hflip) | int(self.vflip) << 1 | int(self.transpose) << 2
        return "<libcamera.Transform '" + _TRANSFORM_NAMES[bits] + "'>"


_TRANSFORM_NAMES = ("identity", "hflip", "vflip", "hvflip", "transpose", "rot270", "rot90", "rot180transpose")
