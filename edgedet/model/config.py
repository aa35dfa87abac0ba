"""Configuration of the model: which file, which runtime, which delegate, how frames are prepared."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PreprocessConfig(Strict):
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
    roi: Optional[tuple[float, float, float, float]] = None
    # bilinear's implementation: opencv (INTER_LINEAR, ~10x faster) when installed, else numpy (the closest
    # to TFLite's own RESIZE_BILINEAR); both sample at half-pixel centers and agree within 1 per pixel.
    backend: Optional[Backend] = None
    # Normalization of float inputs (and the real-valued meaning of integer inputs). None = from the
    # model's metadata or sidecar, else the defaults documented in README (127.5/127.5 for float models).
    mean: Optional[Union[float, list[float]]] = None
    std: Optional[Union[float, list[float]]] = None
    # Decoded images above this many pixels are refused (decompression bombs).
    max_image_pixels: int = Field(default=64_000_000, ge=1)

    @field_validator("roi")
    @classmethod
    def _roi_inside_frame(cls, value: tuple[float, float, float, float] | None
                          ) -> tuple[float, float, float, float] | None:
        if value is not None:
            x1, y1, x2, y2 = value
            if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
                raise ValueError("must be [x1, y1, x2, y2] in fractions of the frame with 0 <= x1 < x2 <= 1 "
                                 "and 0 <= y1 < y2 <= 1 (e.g. [0.5, 0, 1, 1] for the right half), or null")
        return value

    @field_validator("std")
    @classmethod
    def _std_positive(cls, value: float | list[float] | None) -> float | list[float] | None:
        values = value if isinstance(value, list) else [value] if value is not None else []
        if any(v <= 0 for v in values):
            raise ValueError("must be > 0")
        return value


class ModelConfig(Strict):
    path: Optional[Path] = None  # None = the bundled default model (default_model_path())
    labels: Optional[Path] = None
    runtime: Runtime = "auto"
    num_threads: Union[Literal["auto"], int] = "auto"
    delegate: Delegate = "cpu"
    edgetpu_device: str = "usb"
    fallback: Fallback = "cpu"
    cpu_model: Optional[Path] = None
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    top_k: int = Field(default=3, ge=1, le=1000)
    # A stage of the frame loop (capture, preprocess, inference, postprocess, a sink) busy longer than this
    # ends the process with exit code 3 so a supervisor restarts it (a hung USB Coral); 0 = off.
    invoke_timeout_s: float = Field(default=10.0, ge=0)

    @field_validator("path", "labels", "cpu_model")
    @classmethod
    def _utf8_path(cls, value: Optional[Path]) -> Optional[Path]:
        # A name with a byte that is not UTF-8 reaches Python as a lone surrogate, which the TFLite runtimes'
        # C++ bindings (and the JSON messages) cannot take.
        if value is not None:
            try:
                str(value).encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"the path {str(value).encode('utf-8', 'surrogateescape')!r} is not valid "
                                 "UTF-8; rename the file (or a folder above it) to a UTF-8 name") from None
        return value

    @field_validator("num_threads")
    @classmethod
    def _threads_positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be 'auto' or an integer >= 1")
        return value

    @field_validator("edgetpu_device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"(usb|pci)(:\d+)?|:\d+", value):
            raise ValueError("must be one of usb, usb:N, pci, pci:N or :N")
        return value
