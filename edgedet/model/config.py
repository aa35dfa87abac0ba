"""Configuration of the model: which file, which runtime, which delegate, how frames are prepared."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

from edgedet.section import Check, Range, Section

Runtime = Literal["auto", "litert", "tflite-runtime", "tensorflow"]
Delegate = Literal["cpu", "edgetpu"]
Fallback = Literal["cpu", "fail"]
ResizeMethod = Literal["bilinear", "nearest", "area", "antialias"]
CropMode = Literal["full", "center"]
Backend = Literal["auto", "numpy", "opencv"]
# What model.preprocess.resize/crop/backend mean when neither the config nor the model's sidecar sets them.
PREPROCESS_DEFAULTS = {"resize": "bilinear", "crop": "full", "backend": "auto"}


DEFAULT_MODEL = "pikachu_mobilenet_v2_0.35_96_int8.tflite"


def default_model_path() -> Optional[Path]:
    """The bundled model, used when ``model.path`` is not set: in the checkout (``models/``, also editable
    installs), where scripts/install.sh puts it (/opt/edgedet/models), or under the venv's share/."""
    import sys

    candidates = [Path(__file__).resolve().parents[2] / "models" / DEFAULT_MODEL,
                  Path("/opt/edgedet/models") / DEFAULT_MODEL,
                  Path(sys.prefix) / "share" / "edgedet" / "models" / DEFAULT_MODEL]
    return next((path for path in candidates if path.is_file()), None)


def _roi_inside_frame(value: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = value
    if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
        raise ValueError("must be [x1, y1, x2, y2] in fractions of the frame with 0 <= x1 < x2 <= 1 "
                         "and 0 <= y1 < y2 <= 1 (e.g. [0.5, 0, 1, 1] for the right half), or null")
    return value


def _std_positive(value: Union[float, list[float]]) -> Union[float, list[float]]:
    if any(v <= 0 for v in (value if isinstance(value, list) else [value])):
        raise ValueError("must be > 0")
    return value


def _utf8_path(value: Path) -> Path:
    # A name with a byte that is not UTF-8 reaches Python as a lone surrogate, which the TFLite runtimes'
    # C++ bindings (and the JSON messages) cannot take.
    try:
        str(value).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"the path {str(value).encode('utf-8', 'surrogateescape')!r} is not valid "
                         "UTF-8; rename the file (or a folder above it) to a UTF-8 name") from None
    return value


def _threads_positive(value: Union[int, str]) -> Union[int, str]:
    if isinstance(value, int) and value < 1:
        raise ValueError("must be 'auto' or an integer >= 1")
    return value


def _device_form(value: str) -> str:
    if not re.fullmatch(r"(usb|pci)(:\d+)?|:\d+", value):
        raise ValueError("must be one of usb, usb:N, pci, pci:N or :N")
    return value


ModelPath = Optional[Annotated[Path, Check(_utf8_path)]]


@dataclasses.dataclass(init=False)
class PreprocessConfig(Section):
    # resize, crop, backend: None = as the model's sidecar declares (how its training images were prepared),
    # else PREPROCESS_DEFAULTS; a value set here overrides the sidecar (the classifier warns when they differ).
    # bilinear = TFLite RESIZE_BILINEAR with half-pixel centers (the default, reproduces the published
    # results); nearest; area (box filter); antialias = PIL's LANCZOS, as pycoral's classify_image.py does.
    resize: Optional[ResizeMethod] = None
    # full = squeeze the whole frame to the input size; center = crop the largest centred square first.
    crop: Optional[CropMode] = None
    # A region of interest [x1, y1, x2, y2] in fractions of the frame (0..1, left/top to right/bottom),
    # cut out before the crop and the resize; None = the whole frame. With crop: center the region is then
    # cropped to the model's aspect ratio.
    roi: Optional[Annotated[tuple[float, float, float, float], Check(_roi_inside_frame)]] = None
    # bilinear's implementation: opencv (INTER_LINEAR, ~10x faster) when installed, else numpy (the closest
    # to TFLite's own RESIZE_BILINEAR); both sample at half-pixel centers and agree within 1 per pixel.
    backend: Optional[Backend] = None
    # Normalization of float inputs (and the real-valued meaning of integer inputs). None = from the
    # model's metadata or sidecar, else the defaults documented in README (127.5/127.5 for float models).
    mean: Optional[Union[float, list[float]]] = None
    std: Optional[Annotated[Union[float, list[float]], Check(_std_positive)]] = None
    # Decoded images above this many pixels are refused (decompression bombs).
    max_image_pixels: Annotated[int, Range(ge=1)] = 64_000_000


@dataclasses.dataclass(init=False)
class ModelConfig(Section):
    path: ModelPath = None  # None = the bundled default model (default_model_path())
    labels: ModelPath = None
    runtime: Runtime = "auto"
    num_threads: Annotated[Union[Literal["auto"], int], Check(_threads_positive)] = "auto"
    delegate: Delegate = "cpu"
    edgetpu_device: Annotated[str, Check(_device_form)] = "usb"
    fallback: Fallback = "cpu"
    cpu_model: ModelPath = None
    preprocess: PreprocessConfig = dataclasses.field(default_factory=PreprocessConfig)
    top_k: Annotated[int, Range(ge=1, le=1000)] = 3
    # A stage of the frame loop (capture, preprocess, inference, postprocess, a sink) busy longer than this
    # ends the process with exit code 3 so a supervisor restarts it (a hung USB Coral); 0 = off.
    invoke_timeout_s: Annotated[float, Range(ge=0)] = 10.0
