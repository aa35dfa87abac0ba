"""TFLite runtimes and the Edge TPU delegate.

Three Python packages provide the same ``Interpreter`` API: ``ai_edge_litert`` (LiteRT, the maintained
successor, CPython 3.10+ on x86_64/aarch64), ``tflite_runtime`` (frozen at 2.14, CPython <= 3.11, needs
NumPy < 2, the only choice on armv7l) and ``tensorflow.lite`` (the full TensorFlow, heavy: last resort).
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from edgedet.errors import DelegateError, ModelError

log = logging.getLogger(__name__)

# config name -> (python module with Interpreter/load_delegate, distribution names for the version)
RUNTIMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "litert": ("ai_edge_litert.interpreter", ("ai-edge-litert", "ai-edge-litert-nightly")),
    "tflite-runtime": ("tflite_runtime.interpreter", ("tflite-runtime", "tflite_runtime")),
    "tensorflow": ("tensorflow.lite", ("tensorflow", "tensorflow-cpu", "tensorflow-aarch64")),
}
AUTO_ORDER = ("litert", "tflite-runtime", "tensorflow")


@dataclass(frozen=True)
class Runtime:
    name: str  # litert | tflite-runtime | tensorflow
    version: str
    module: ModuleType

    @property
    def interpreter_class(self) -> Any:
        return self.module.Interpreter

    def load_delegate(self, library: str, options: dict[str, str]) -> Any:
        loader = getattr(self.module, "load_delegate", None) or self.module.experimental.load_delegate
        return loader(library, options)

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


def _version(dists: tuple[str, ...], module: ModuleType) -> str:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return str(getattr(module, "__version__", "unknown"))


def _import(name: str) -> Runtime:
    module_name, dists = RUNTIMES[name]
    module = importlib.import_module(module_name)
    return Runtime(name=name, version=_version(dists, module), module=module)


def select_runtime(requested: str = "auto") -> Runtime:
    """The runtime named in config, or for ``auto`` the first importable of litert, tflite-runtime, TF."""
    if requested != "auto":
        if requested not in RUNTIMES:
            raise ModelError(f"model.runtime: unknown runtime '{requested}'",
                             fix="use auto, litert, tflite-runtime or tensorflow")
        try:
            return _import(requested)
        except ImportError as exc:
            hint = {"litert": "pip install ai-edge-litert", "tflite-runtime": "pip install tflite-runtime 'numpy<2'",
                    "tensorflow": "pip install tensorflow"}[requested]
            raise ModelError(f"model.runtime: {requested} is not importable ({_import_reason(exc)})",
                             fix=f"{hint}, or set model.runtime: auto") from None
    errors = []
    for name in AUTO_ORDER:
        try:
            return _import(name)
        except ImportError as exc:
            errors.append(f"{name}: {_import_reason(exc)}")
    raise ModelError("no TFLite runtime is installed (" + "; ".join(errors) + ")",
                     fix="pip install ai-edge-litert (or tflite-runtime with numpy<2 on armv7l)")


def _import_reason(exc: ImportError) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "_ARRAY_API" in text or "numpy.core.multiarray failed" in text:
        return f"{text} — tflite-runtime 2.14 needs numpy<2"
    return text


def edgetpu_library() -> str:
    """The libedgetpu file name for this OS (what the Coral packages install)."""
    return {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}.get(
        platform.system(), "libedgetpu.so.1")


def edgetpu_options(device: str) -> dict[str, str]:
    """``usb``, ``usb:N``, ``pci``, ``pci:N`` or ``:N`` as the delegate's ``device`` option."""
    return {"device": device} if device else {}


def load_edgetpu_delegate(runtime: Runtime, device: str) -> Any:
    library = os.environ.get("EDGEDET_EDGETPU_LIBRARY", edgetpu_library())
    fix = ("install libedgetpu1-std (built for this runtime's TensorFlow version), plug the Coral in "
           "(lsusb shows 1a6e:089a or 18d1:9302) or check /dev/apex_0, or set model.fallback: cpu")
    try:
        # Load the library ourselves first: when it is missing, the runtimes' Delegate objects fail in their
        # constructor and then print an "Exception ignored in __del__" traceback on garbage collection.
        ctypes.CDLL(library)
    except OSError as exc:
        raise DelegateError(f"cannot load the Edge TPU library {library} ({exc})", fix=fix) from None
    try:
        return runtime.load_delegate(library, edgetpu_options(device))
    except (ValueError, OSError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DelegateError(
            f"cannot load the Edge TPU delegate {library} for device '{device}' ({reason})",
            fix=fix) from None


def make_interpreter(model_path: str | Path, runtime: Runtime, num_threads: Optional[int] = None,
                     delegates: Optional[list[Any]] = None) -> Any:
    """Build and allocate an interpreter; runtime failures become one ModelError line."""
    kwargs: dict[str, Any] = {"model_path": str(model_path)}
    if num_threads:
        kwargs["num_threads"] = int(num_threads)
    if delegates:
        kwargs["experimental_delegates"] = delegates
    try:
        interpreter = runtime.interpreter_class(**kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        text = " ".join(str(exc).split())
        if "edgetpu-custom-op" in text:
            raise ModelError("model is compiled for the Edge TPU (edgetpu-custom-op) and cannot run on the CPU",
                             where=model_path,
                             fix="set model.delegate: edgetpu, or use the CPU build of the model") from None
        op_version = "version" in text and ("not find" in text or "Didn't find" in text)
        fix = (f"this model needs a newer runtime than {runtime.name} {runtime.version}; "
               "install ai-edge-litert or reconvert for the older runtime") if op_version else \
            "check that the file is a valid TFLite model"
        raise ModelError(f"{runtime.name} {runtime.version} cannot load the model ({text[:300]})",
                         where=model_path, fix=fix) from None
    return interpreter


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
