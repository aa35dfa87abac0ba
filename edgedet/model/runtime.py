"""TFLite runtimes and the Edge TPU delegate.

Three Python packages provide the same ``Interpreter`` API: ``ai_edge_litert`` (LiteRT, the maintained
successor, CPython 3.10+ on x86_64/aarch64), ``tflite_runtime`` (frozen at 2.14, CPython <= 3.11, needs
NumPy < 2, the only choice on armv7l) and ``tensorflow.lite`` (the full TensorFlow, heavy: last resort).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
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
    reason: str = ""  # why ``auto`` chose it, when that depended on libedgetpu

    @property
    def interpreter_class(self) -> Any:
        return self.module.Interpreter

    def load_delegate(self, library: str, options: dict[str, str]) -> Any:
        loader = getattr(self.module, "load_delegate", None) or self.module.experimental.load_delegate
        return loader(library, options)

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


def _version(dists: tuple[str, ...], module: ModuleType) -> str:
    # The package's own __version__ (each runtime sets it to its distribution's version) spares a run the
    # import of importlib.metadata and what it pulls in; the distribution's metadata is the fallback.
    version = getattr(sys.modules[module.__name__.split(".")[0]], "__version__", None)
    if isinstance(version, str) and version:
        return version
    return next((v for v in (_dist_version(d) for d in dists) if v), "unknown")


def _import(name: str) -> Runtime:
    module_name, dists = RUNTIMES[name]
    module = importlib.import_module(module_name)
    return Runtime(name=name, version=_version(dists, module), module=module)


def select_runtime(requested: str = "auto", delegate: str = "cpu") -> Runtime:
    """The runtime named in config, or for ``auto`` the first importable of litert, tflite-runtime, TF.

    With ``delegate: edgetpu``, ``auto`` first looks for a runtime built from the same TensorFlow version as
    the installed libedgetpu (see :func:`paired_runtime`).
    """
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
    if delegate == "edgetpu":
        paired = paired_runtime()
        if paired is not None:
            return paired
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


# The external-delegate entry points every TFLite runtime's load_delegate() looks up in the library.
DELEGATE_SYMBOLS = ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate")
LIBEDGETPU_PACKAGES = ("libedgetpu1-std", "libedgetpu1-max")
# A maintained build's Debian version names the TensorFlow it was built from: "16.0tf2.17.1-1.bookworm".
_TF_IN_VERSION = re.compile(r"tf(\d+\.\d+(?:\.\d+)?)", re.IGNORECASE)


@dataclass(frozen=True)
class LibedgetpuPackage:
    package: str  # libedgetpu1-std | libedgetpu1-max
    version: str  # the Debian version, e.g. 16.0tf2.17.1-1.bookworm
    tf_version: Optional[str]  # e.g. 2.17.1, when the version names it

    @classmethod
    def from_dpkg(cls, package: str, version: str) -> LibedgetpuPackage:
        match = _TF_IN_VERSION.search(version)
        return cls(package.split(":")[0], version, match.group(1) if match else None)

    def describe(self) -> str:
        built = f"built for TF {self.tf_version}" if self.tf_version else "its TF version not in its version"
        return f"{self.package} {self.version} ({built})"


def installed_libedgetpu() -> Optional[LibedgetpuPackage]:
    """The libedgetpu package dpkg has installed, or None (no dpkg, or installed some other way)."""
    dpkg_query = shutil.which("dpkg-query")
    if dpkg_query is None:
        return None
    import subprocess  # here, not at the top: a run without the Edge TPU never starts a process

    try:
        out = subprocess.run([dpkg_query, "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\\n",
                              *LIBEDGETPU_PACKAGES], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2].startswith("ii"):
            return LibedgetpuPackage.from_dpkg(parts[0], parts[1])
    return None


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def paired_runtime(package: Optional[LibedgetpuPackage] = None) -> Optional[Runtime]:
    """For ``runtime: auto`` with the Edge TPU: tflite-runtime (then tensorflow) of libedgetpu's TF version.

    The rule, kept to what can be read without the hardware: a maintained libedgetpu names its TF version in
    its Debian version; tflite-runtime and tensorflow versions are TF versions, ai-edge-litert's are not. So
    a tflite-runtime or tensorflow with the same major.minor as libedgetpu is preferred; otherwise (no
    package, no TF in its version, no matching runtime) None, and ``auto`` keeps its usual order. A pairing
    is logged at info level with its reason (and named in a delegate error), the other outcomes at debug.
    """
    package = package or installed_libedgetpu()
    if package is None or package.tf_version is None:
        why = "no libedgetpu1-std/-max package found by dpkg" if package is None else package.describe()
        log.debug("runtime auto: libedgetpu's TensorFlow version is unknown (%s); using the usual order %s",
                 why, ", ".join(AUTO_ORDER))
        return None
    for name in ("tflite-runtime", "tensorflow"):
        installed = next((v for v in (_dist_version(d) for d in RUNTIMES[name][1]) if v), None)
        if installed is None or _minor(installed) != _minor(package.tf_version):
            continue
        try:
            runtime = _import(name)
        except ImportError as exc:
            log.warning("runtime auto: %s %s matches %s but does not import (%s)", name, installed,
                     package.describe(), _import_reason(exc))
            continue
        reason = f"pairs with {package.describe()}"
        log.info("runtime auto: %s %s, which %s", runtime.name, runtime.version, reason)
        return Runtime(runtime.name, runtime.version, runtime.module, reason)
    log.debug("runtime auto: no tflite-runtime or tensorflow %s installed to pair with %s; using the usual "
             "order %s", ".".join(_minor(package.tf_version)), package.describe(), ", ".join(AUTO_ORDER))
    return None


def _dist_version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Collect what native code (and Python) writes to file descriptor 2 meanwhile, as lines."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(line.strip() for line in sink.read().decode(errors="replace").splitlines()
                         if line.strip())


def _without_python_noise(lines: list[str]) -> list[str]:
    """Drop the "Exception ignored in ... Delegate.__del__" traceback a half-built Delegate leaves."""
    kept, skipping = [], False
    for line in lines:
        if line.startswith("Exception ignored"):
            skipping = True
            continue
        if skipping and (line.startswith(("Traceback", "File ", "^", "~")) or ":" in line.split(" ")[0]
                         or line.startswith(" ")):
            continue
        skipping = False
        kept.append(line)
    return kept


def load_edgetpu_delegate(runtime: Runtime, device: str) -> Any:
    """The Edge TPU delegate, or DelegateError with one line: each way the runtimes fail becomes one line.

    Measured with ai-edge-litert: a missing library raises OSError from ctypes (not the documented
    ValueError) and the half-built Delegate prints an ignored AttributeError from ``__del__``; a library
    without the delegate entry points raises AttributeError ("undefined symbol"); a library whose delegate
    cannot open a device raises ``ValueError: Failed to load delegate from ...`` with libedgetpu's message.
    The library and its symbols are checked first, and whatever the load writes to stderr is folded into
    the error (or logged at debug level on success).
    """
    library = os.environ.get("EDGEDET_EDGETPU_LIBRARY", edgetpu_library())
    fix = ("install libedgetpu1-std built for this runtime's TensorFlow version (docs/troubleshooting.md), "
           "plug the Coral in (lsusb shows 1a6e:089a or 18d1:9302) or check /dev/apex_0, or set "
           "model.fallback: cpu")
    try:
        handle = ctypes.CDLL(library)
    except OSError as exc:
        raise DelegateError(f"cannot load the Edge TPU library {library} ({exc})", fix=fix) from None
    missing = [symbol for symbol in DELEGATE_SYMBOLS if not hasattr(handle, symbol)]
    if missing:
        raise DelegateError(f"{library} is not a TFLite delegate library (undefined symbol: {missing[0]})",
                            fix="point EDGEDET_EDGETPU_LIBRARY at libedgetpu.so.1, or reinstall "
                                "libedgetpu1-std") from None
    reason = ""
    delegate = None
    with _stderr_captured() as output:
        try:
            delegate = runtime.load_delegate(library, edgetpu_options(device))
        except (ValueError, OSError, RuntimeError, AttributeError) as exc:
            text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            reason = text or type(exc).__name__
        # A Delegate whose constructor failed is collected here, so its __del__ output is captured too.
        gc.collect()
    said = _without_python_noise(output)
    if delegate is None:
        detail = "; ".join([reason, *said[:3]])
        paired = f"; runtime {runtime.name} {runtime.version} {runtime.reason}" if runtime.reason else ""
        raise DelegateError(
            f"cannot load the Edge TPU delegate {library} for device '{device}' ({detail}{paired})",
            fix=fix) from None
    if said:
        log.debug("libedgetpu: %s", " / ".join(said))
    return delegate


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
