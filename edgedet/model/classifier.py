"""One image in, trustworthy classes out: the model, its runtime and delegate, its pre- and postprocessing."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, get_args

import numpy as np

from edgedet.errors import DelegateError, EdgedetError, ModelError, one_line
from edgedet.model.config import PREPROCESS_DEFAULTS, Backend, CropMode, ModelConfig, PreprocessConfig, ResizeMethod
from edgedet.model.labels import resolve_labels
from edgedet.model.preprocess import FrameError, ImageLike, InputQuantization, Preprocessor
from edgedet.model.runtime import Runtime, cpu_count, load_edgetpu_delegate, make_interpreter, select_runtime
from edgedet.model.tflite_file import TfliteFile, numpy_dtype, read_tflite
from edgedet.results import Class
from edgedet.stagewatch import StageClock

log = logging.getLogger(__name__)

DEFAULT_MEAN = 127.5
DEFAULT_STD = 127.5


STAGES = ("preprocess", "inference", "postprocess")
# The sidecar's preprocess values the daemon understands (edgedet.model.config's Literal types).
_PREPROCESS_CHOICES = {"resize": get_args(ResizeMethod), "crop": get_args(CropMode), "backend": get_args(Backend)}

# make_interpreter's signature: (model path, runtime, threads, delegates) -> an allocated interpreter.
InterpreterFactory = Callable[[Path, Runtime, int, list[Any]], Any]


class Inference(NamedTuple):
    """What :meth:`Classifier.infer` returns: the top classes and the time of each stage in milliseconds."""

    top_k: list[Class]
    latency_ms: dict[str, float]  # the STAGES


class Prepared(NamedTuple):
    """A frame preprocessed by :meth:`Classifier.prepare` straight into the input tensor of one of the classifier's
    two interpreters, not yet invoked."""

    slot: int  # which interpreter holds it
    preprocess_ms: float


class Invoked(NamedTuple):
    """A frame invoked by :meth:`Classifier.invoke_staged`, not yet ranked: its raw scores stay in the output tensor
    of interpreter ``slot`` until that interpreter's next invoke."""

    slot: int
    preprocess_ms: float
    inference_ms: float


class _Slot(NamedTuple):
    """One interpreter of a classifier and its tensors, viewed without a copy (``interpreter.tensor``)."""

    interpreter: Any
    input_view: Callable[[], np.ndarray]
    output_view: Callable[[], np.ndarray]


def cpu_twin(model_path: Path, explicit: Optional[Path] = None) -> Optional[Path]:
    """The CPU build of an Edge TPU model: ``model.cpu_model``, else ``foo_edgetpu.tflite`` -> ``foo.tflite``."""
    if explicit is not None:
        return explicit
    if model_path.stem.endswith("_edgetpu"):
        twin = model_path.with_name(model_path.stem[: -len("_edgetpu")] + model_path.suffix)
        if twin.is_file():
            return twin
    return None


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer scores -> float, through int64 so uint8/int8 arithmetic cannot wrap (as pycoral does)."""
    if not scale:
        return values.astype(np.float32, copy=False)
    return (scale * (values.astype(np.int64) - zero_point)).astype(np.float32)


# For 8-bit scores, a byte key whose ascending order is the scores' descending order: 255 - u for uint8, and for
# int8 (two's complement, read as its byte u) 127 - v, which is u ^ 0x7F. A translation table for bytes.translate.
_DESCENDING_KEY = {np.dtype(np.uint8): bytes(0xFF - u for u in range(256)),
                   np.dtype(np.int8): bytes(u ^ 0x7F for u in range(256))}


def smallest_bytes(keys: bytes, k: int) -> list[int]:
    """Indices of the k smallest bytes of ``keys``, smallest first, ties by lower index (1 <= k <= len).

    Each distinct value is found with bytes.find (memchr), smallest first: a handful of C calls for a
    1001-class output, where numpy's calls cost tens of microseconds each on the cold caches after an invoke.
    """
    found: list[int] = []
    for key in sorted(set(keys)):
        i = keys.find(key)
        while i >= 0:
            found.append(i)
            if len(found) == k:
                return found
            i = keys.find(key, i + 1)
    return found


def top_indices(values: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest values, largest first, ties by lower index."""
    k = max(1, min(k, values.size))
    key = _DESCENDING_KEY.get(values.dtype)
    if key is not None:  # 8-bit models: every quantized classifier
        return smallest_bytes(values.tobytes().translate(key), k)
    if k < values.size:
        # Every value tied with the k-th largest is a candidate: argpartition alone picks among ties
        # arbitrarily.
        kth = values[np.argpartition(values, values.size - k)[values.size - k]]
        candidates = np.flatnonzero(values >= kth)
    else:
        candidates = np.arange(values.size)
    # A stable sort of the negated candidates keeps ties in index order.
    keys = values[candidates].astype(np.float64 if values.dtype.kind == "f" else np.int64)
    np.negative(keys, out=keys)
    return [int(i) for i in candidates[np.argsort(keys, kind="stable")[:k]]]


def preprocess_settings(pre: PreprocessConfig, model_file: TfliteFile) -> tuple[str, str, str, dict[str, str]]:
    """resize, crop, backend, and where each came from.

    A value set in the config (config file, --set, classify --resize/--crop) wins, with a warning when it
    differs from the sidecar's ``preprocess`` (how the training images were prepared); a key the config
    leaves null takes the sidecar's value, else PREPROCESS_DEFAULTS.
    """
    declared = (model_file.sidecar or {}).get("preprocess")
    declared = declared if isinstance(declared, dict) else {}
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for key in ("resize", "crop", "backend"):
        configured = getattr(pre, key)
        model_value = declared.get(key)
        valid = model_value in _PREPROCESS_CHOICES[key]
        if configured is not None:
            values[key], sources[key] = configured, "config"
            if valid and configured != model_value:
                log.warning("model.preprocess.%s: %s overrides %s's sidecar, which says the model was trained "
                            "with %s; scores may differ from the host's evaluation",
                            key, configured, model_file.path.name, model_value)
        elif valid:
            values[key], sources[key] = str(model_value), "sidecar"
        else:
            values[key], sources[key] = PREPROCESS_DEFAULTS[key], "default"
    return values["resize"], values["crop"], values["backend"], sources


class Classifier:
    """A loaded model ready to classify frames. Build it with :meth:`from_config`."""

    def __init__(self, cfg: ModelConfig, *, auto_threads: Optional[int] = None,
                 interpreter_factory: InterpreterFactory = make_interpreter) -> None:
        """``interpreter_factory`` builds the interpreter (default: the runtime's, :func:`make_interpreter`): the
        seam through which tests and benchmarks put in a stand-in (edgedet/model/simulated.py)."""
        if cfg.path is None:
            raise ModelError("model.path is not set and the bundled default model was not found",
                             fix="set model.path in config.yaml or pass --model")
        self.config = cfg
        requested_path = Path(cfg.path)
        model_file = read_tflite(requested_path)
        model_file.validate_classifier()
        self.runtime: Runtime = select_runtime(cfg.runtime, cfg.delegate)
        self.num_threads = cfg.num_threads if isinstance(cfg.num_threads, int) else (auto_threads or cpu_count())
        self.delegate_info: dict[str, Any] = {"requested": cfg.delegate, "active": "cpu",
                                              "device": cfg.edgetpu_device if cfg.delegate == "edgetpu" else None,
                                              "fallback": False}
        delegates = []
        if cfg.delegate == "edgetpu":
            try:
                delegates = [load_edgetpu_delegate(self.runtime, cfg.edgetpu_device)]
                self.delegate_info["active"] = "edgetpu"
                if not model_file.is_edgetpu:
                    log.warning("%s is not compiled for the Edge TPU: every op runs on the CPU; compile it with "
                                "edgetpu_compiler for the Coral", requested_path)
            except DelegateError as exc:
                if cfg.fallback == "fail":
                    raise
                twin = cpu_twin(requested_path, cfg.cpu_model) if model_file.is_edgetpu else requested_path
                if twin is None:
                    raise ModelError(
                        f"the Edge TPU is unavailable and no CPU build of the model was found for model.fallback: "
                        f"cpu ({exc})", where=requested_path,
                        fix=f"put {requested_path.stem.replace('_edgetpu', '')}.tflite beside it or set "
                            "model.cpu_model") from None
                log.warning("EDGE TPU UNAVAILABLE — falling back to the CPU (model.fallback: cpu): %s. "
                            "Running %s on the CPU; expect much higher latency.", exc, twin)
                self.delegate_info.update(fallback=True, fallback_reason=str(exc), cpu_model=str(twin))
                model_file = read_tflite(twin)
                model_file.validate_classifier()
        elif model_file.is_edgetpu:
            twin = cpu_twin(requested_path, cfg.cpu_model)
            use = f"use its CPU build {twin}" if twin else "use the CPU build of the model (without _edgetpu)"
            raise ModelError("model is compiled for the Edge TPU (edgetpu-custom-op) and cannot run on the CPU",
                             where=requested_path,
                             fix=f"set model.delegate: edgetpu (needs libedgetpu.so.1 and a Coral), or {use}")
        self.model_file: TfliteFile = model_file
        self._interpreter_factory = interpreter_factory
        started = time.perf_counter()
        self._interpreter = interpreter_factory(model_file.path, self.runtime, self.num_threads, delegates)
        self.init_ms = (time.perf_counter() - started) * 1e3

        input_details = self._interpreter.get_input_details()[0]
        output_details = self._interpreter.get_output_details()[0]
        self._input_index = input_details["index"]
        self._output_index = output_details["index"]
        _, height, width, _ = (int(d) for d in input_details["shape"])
        self.input_size = (width, height)
        # A view of the input tensor is fetched per frame and dropped before invoke(), which refuses to run
        # while one is alive; writing through it saves set_tensor's copy.
        self._slots = [self._slot(self._interpreter)]
        self._last_slot = 1  # the interpreter prepare() filled last: the first frame goes into the first
        self._second_failed = False
        in_spec = model_file.inputs[0]
        out_spec = model_file.outputs[0]
        self._out_scale, self._out_zero = out_spec.scale, out_spec.zero_point
        out_dtype = self._out_dtype = np.dtype(numpy_dtype(out_spec))
        self._rank_key = _DESCENDING_KEY.get(out_dtype)  # None: not an 8-bit output
        # An 8-bit score has 256 possible values: each one's dequantized score, indexed by its byte.
        self._score_of_byte = [] if self._rank_key is None else dequantize(
            np.arange(256, dtype=np.uint8).view(out_dtype), self._out_scale, self._out_zero).tolist()
        self.num_classes = int(np.prod(out_spec.shape))

        mean, std, self.normalization_source = self._normalization()
        self.quantization = InputQuantization.build(numpy_dtype(in_spec), in_spec.scale, in_spec.zero_point,
                                                    np.asarray(mean), np.asarray(std))
        self.normalization = {"mean": mean, "std": std, "source": self.normalization_source,
                              "raw_pixels": self.quantization.raw}
        resize, crop, backend, self.preprocess_source = preprocess_settings(cfg.preprocess, model_file)
        try:
            self.preprocessor = Preprocessor(width, height, self.quantization, resize, crop, backend,
                                             roi=cfg.preprocess.roi)
        except ImportError as exc:
            if self.preprocess_source.get("backend") != "sidecar":
                raise ModelError(str(exc), fix="or set model.preprocess.backend: auto") from None
            # OpenCV and numpy sample alike and agree within 1 per pixel: a trained-with-OpenCV model still runs.
            log.warning("%s was prepared with OpenCV's bilinear resize but OpenCV is not installed; using numpy's "
                        "(within 1 per pixel; pip install 'edgedet[opencv]' to match)", self.model_file.path.name)
            self.preprocessor = Preprocessor(width, height, self.quantization, resize, crop, "numpy",
                                             roi=cfg.preprocess.roi)
        self.labels, self.labels_source = self._labels()
        self.top_k = cfg.top_k
        # set by the frame loop: invoke and postprocess are noted there (edgedet.stagewatch, a hung invoke)
        self.stage_clock: Optional[StageClock] = None

        # The first invoke is slow (on the Edge TPU it uploads the model): do it now and time it on its own.
        self.first_invoke_ms = self._first_invoke(self._interpreter)

    def _slot(self, interpreter: Any) -> _Slot:
        return _Slot(interpreter, interpreter.tensor(self._input_index), interpreter.tensor(self._output_index))

    def _first_invoke(self, interpreter: Any) -> float:
        width, height = self.input_size
        neutral = self.quantization.apply(np.full((height, width, 3), 128, np.uint8))[None]
        started = time.perf_counter()
        interpreter.set_tensor(self._input_index, neutral)
        interpreter.invoke()
        return (time.perf_counter() - started) * 1e3

    def double_buffered(self) -> bool:
        """Whether :meth:`prepare` can fill one interpreter's input tensor while the other one invokes: builds the
        second interpreter (same model, runtime, threads and delegate) on the first call, which the frame loop
        makes before its first frame with this classifier (classify and bench never need one). False, with a
        warning, when it cannot be built; the frames then go in series. On the Edge TPU, taking turns does not
        reload the parameters: both instances carry the model's caching token, and libedgetpu resets its cache
        only when the token changes."""
        if len(self._slots) == 2 or self._second_failed:
            return not self._second_failed
        try:
            delegates = ([load_edgetpu_delegate(self.runtime, self.config.edgetpu_device)]
                         if self.delegate_info["active"] == "edgetpu" else [])
            second = self._interpreter_factory(self.model_file.path, self.runtime, self.num_threads, delegates)
            self._first_invoke(second)
        except (EdgedetError, OSError, RuntimeError, ValueError, MemoryError) as exc:
            self._second_failed = True
            log.warning("%s: a second interpreter could not be built (%s); frames are classified one after the "
                        "other, not prepared during the invoke", self.model_file.path.name, one_line(exc))
            return False
        self._slots.append(self._slot(second))
        return True

    @classmethod
    def from_config(cls, cfg: ModelConfig, *, auto_threads: Optional[int] = None,
                    interpreter_factory: InterpreterFactory = make_interpreter) -> Classifier:
        return cls(cfg, auto_threads=auto_threads, interpreter_factory=interpreter_factory)

    # -- model facts -------------------------------------------------------------------------------------

    def _normalization(self) -> tuple[list[float], list[float], str]:
        """Model metadata or sidecar first, then config, then 127.5/127.5 (see README, "Preprocessing")."""
        pre = self.config.preprocess
        sidecar = self.model_file.sidecar or {}
        norm = sidecar.get("normalization")
        found: Optional[tuple[Any, Any, str]] = None
        if isinstance(norm, dict) and "mean" in norm and "std" in norm:
            found = (norm["mean"], norm["std"], "sidecar")
        elif self.model_file.metadata_normalization:
            mean, std = self.model_file.metadata_normalization
            found = (mean, std, "metadata")
        if found is not None:
            if pre.mean is not None or pre.std is not None:
                log.warning("model.preprocess.mean/std ignored: %s declares mean=%s std=%s in its %s",
                            self.model_file.path.name, found[0], found[1], found[2])
            return _as_list(found[0]), _as_list(found[1]), found[2]
        if pre.mean is not None or pre.std is not None:
            return _as_list(pre.mean if pre.mean is not None else DEFAULT_MEAN), \
                _as_list(pre.std if pre.std is not None else DEFAULT_STD), "config"
        return [DEFAULT_MEAN], [DEFAULT_STD], "default"

    def _labels(self) -> tuple[list[str], str]:
        labels, source = resolve_labels(self.config.labels, self.model_file)
        if source == "none":
            log.warning("%s: no labels (none in its metadata or sidecar, no labels file beside it); "
                        "classes are reported as 'class N' — set model.labels", self.model_file.path)
            return [], "none"
        if len(labels) != self.num_classes:
            log.warning("labels count mismatch: %s has %d labels but the model outputs %d classes; "
                        "check that the labels belong to this model", source, len(labels), self.num_classes)
        return labels, source

    @property
    def name(self) -> str:
        return self.model_file.name

    @property
    def info(self) -> dict[str, Any]:
        spec = self.model_file.inputs[0]
        return {
            "model": {"name": self.name, "path": str(self.model_file.path), "sha256": self.model_file.sha256,
                      "size_bytes": self.model_file.size_bytes, "input_shape": list(spec.shape),
                      "input_dtype": spec.dtype.lower(), "num_classes": self.num_classes,
                      "label_count": len(self.labels), "labels_source": self.labels_source,
                      "edgetpu_compiled": self.model_file.is_edgetpu},
            "runtime": {**self.runtime.as_dict(), "threads": self.num_threads},
            "delegate": dict(self.delegate_info),
            "preprocess": {"resize": self.preprocessor.method, "backend": self.preprocessor.backend,
                           "crop": self.preprocessor.crop,
                           "roi": list(self.preprocessor.roi) if self.preprocessor.roi is not None else None,
                           **self.normalization},
            "init_ms": round(self.init_ms, 3),
            "first_invoke_ms": round(self.first_invoke_ms, 3),
        }

    # -- the hot path --------------------------------------------------------------------------------------

    def preprocess(self, frame: ImageLike) -> np.ndarray:
        return self.preprocessor(frame)

    def scores(self) -> np.ndarray:
        """Every class's score of the last inference, dequantized."""
        raw = self._interpreter.get_tensor(self._output_index).reshape(-1)
        return dequantize(raw, self._out_scale, self._out_zero)

    def _top_classes(self, top_k: Optional[int], data: Optional[bytes] = None) -> list[Class]:
        """Ranks the raw (quantized) scores and dequantizes only the k it returns: dequantization is monotonic
        (scale > 0), so the per-frame cost stays tiny. ``data``: an output tensor's bytes (default: the first
        interpreter's). One ``tobytes`` of a view is the copy out: right after an invoke, on cold caches, numpy's
        ``copy()`` costs more (README, performance)."""
        if data is None:
            data = self._slots[0].output_view().tobytes()
        k = max(1, min(top_k or self.top_k, len(data) // self._out_dtype.itemsize))
        labels = self.labels
        if self._rank_key is not None:
            # 8-bit scores: only Python over the bytes (see smallest_bytes)
            score_of = self._score_of_byte
            return [Class(i, score_of[data[i]], labels[i] if i < len(labels) else f"class {i}")
                    for i in smallest_bytes(data.translate(self._rank_key), k)]
        raw = np.frombuffer(data, self._out_dtype)
        order = top_indices(raw, k)
        scores = dequantize(raw[order], self._out_scale, self._out_zero)
        return [Class(i, float(score), labels[i] if i < len(labels) else f"class {i}")
                for i, score in zip(order, scores)]

    @property
    def leaves_cpu_free(self) -> bool:
        """True when invoke() runs off the CPU (the Edge TPU, or an interpreter that says so): then the frame
        loop prepares the next frame during it (:meth:`prepare` / :meth:`invoke_staged`)."""
        return self.delegate_info["active"] == "edgetpu" or bool(getattr(self._interpreter, "leaves_cpu_free",
                                                                         False))

    # The stages, timed here and only here: infer() runs them in series straight into the input tensor; the
    # overlapped loop runs prepare on its own thread, then invoke_staged, then rank.

    def _preprocess_into(self, frame: ImageLike, out: np.ndarray) -> float:
        t0 = time.perf_counter()
        self.preprocessor.into(frame, out)
        return (time.perf_counter() - t0) * 1e3

    def _preprocess_into_input(self, frame: ImageLike, slot: int) -> float:
        """Preprocess ``frame`` straight into interpreter ``slot``'s input tensor; raises FrameError (from
        preprocessing) for a frame that cannot be used."""
        try:
            return self._preprocess_into(frame, self._slots[slot].input_view()[0])
        except FrameError as exc:
            message = str(exc)
        # Raised afresh, outside the handler: the original's traceback holds the input tensor's view, and an
        # exception kept alive (a log record holding it) would make every later invoke() refuse to run.
        raise FrameError(message)

    def _invoke_and_rank(self, preprocess_ms: float, top_k: Optional[int]) -> Inference:
        t1 = time.perf_counter()
        clock = self.stage_clock
        if clock is not None:
            clock.enter("inference")
        self._interpreter.invoke()
        t2 = time.perf_counter()
        if clock is not None:
            clock.enter("postprocess")
        classes = self._top_classes(top_k)
        t3 = time.perf_counter()
        return Inference(classes, {"preprocess": preprocess_ms, "inference": (t2 - t1) * 1e3,
                                   "postprocess": (t3 - t2) * 1e3})

    def infer(self, frame: ImageLike, top_k: Optional[int] = None) -> Inference:
        """Preprocess ``frame``, invoke, rank: the one timed path of ``run``, ``classify`` and ``bench``.

        Raises FrameError (from preprocessing) for a frame that cannot be used."""
        return self._invoke_and_rank(self._preprocess_into_input(frame, 0), top_k)

    def prepare(self, frame: ImageLike) -> Prepared:
        """Preprocess ``frame`` into the input tensor of the interpreter whose turn is next (the two alternate,
        :meth:`double_buffered`), without invoking: safe while the other one invokes on another thread. A Prepared
        stays valid until the second prepare() after it (the next one, while there is one interpreter)."""
        slot = (self._last_slot + 1) % len(self._slots)
        preprocess_ms = self._preprocess_into_input(frame, slot)
        # Only a frame that was prepared takes its interpreter: after a bad frame the next one must not go into
        # the one the previous Prepared is still in.
        self._last_slot = slot
        return Prepared(slot, preprocess_ms)

    def invoke_staged(self, prepared: Prepared, before_invoke: Optional[Callable[[], None]] = None) -> Invoked:
        """Invoke the interpreter that holds a prepared frame, and leave its scores there: ranking them
        (:meth:`rank`) can then run on another thread during the other interpreter's invoke. Nothing is copied
        in or out between two invokes. ``before_invoke`` runs just before invoke(): work it hands to another
        thread starts while this invoke runs."""
        t1 = time.perf_counter()
        clock = self.stage_clock
        if clock is not None:
            clock.enter("inference")
        if before_invoke is not None:
            before_invoke()
        self._slots[prepared.slot].interpreter.invoke()
        t2 = time.perf_counter()
        return Invoked(prepared.slot, prepared.preprocess_ms, (t2 - t1) * 1e3)

    def rank(self, invoked: Invoked, top_k: Optional[int] = None) -> Inference:
        """The top classes of an :class:`Invoked` frame (the postprocess stage of :meth:`infer`), read from its
        interpreter's output tensor before that interpreter's next invoke."""
        t2 = time.perf_counter()
        classes = self._top_classes(top_k, self._slots[invoked.slot].output_view().tobytes())
        return Inference(classes, {"preprocess": invoked.preprocess_ms, "inference": invoked.inference_ms,
                                   "postprocess": (time.perf_counter() - t2) * 1e3})


def _as_list(value: Any) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
