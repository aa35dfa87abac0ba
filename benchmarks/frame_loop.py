#!/usr/bin/env python3
"""The frame loop against bare invoke(): CPU-only throughput, overlap with a SIMULATED accelerator, the CPU
edgedet costs per frame at 30 fps, and memory.

    python benchmarks/frame_loop.py cpu      [--pairs 5] [--seconds 3]   # edgedet and the least serial loop / best bare
    python benchmarks/frame_loop.py overlap  [--pairs 5] [--seconds 3]   # simulated 2.5 / 1.0 ms, CPU ovl/serial
    python benchmarks/frame_loop.py cpu-per-frame [--pairs 5] [--seconds 3]
    python benchmarks/frame_loop.py memory   [--frames 20000]
    python benchmarks/frame_loop.py floors   --frames 2000   # the resize and the wake-ups, timed alone
    python benchmarks/frame_loop.py overlap-floor [--pairs 6] [--seconds 2]   # the least an overlapped loop does

Every comparison is paired: the two sides run back to back, the order alternating from pair to pair, and
the figure is the median of the per-pair ratios (this 2-core machine is shared and noisy). The script
measures the checkout it belongs to, in process and in the ``edgedet run`` processes it starts, wherever it
is run from: run an older checkout's copy for before/after figures. The accelerator of ``overlap`` is
edgedet.model.simulated: invoke() sleeps with the GIL released and returns the real model's scores for one
fixed tensor; no Edge TPU was used.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np
from paired import checkout_env, cpu_between, free_port, interleaved, paired, task_cpu_ns

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent
sys.path.insert(0, str(CHECKOUT))
# The daemon runs from a neutral directory with this checkout on the path (see checkout_env).
DAEMON_ENV = checkout_env(CHECKOUT)
SHARED = Path(os.environ.get("EDGEDET_SHARED_MODELS", HERE.parents[1] / "shared" / "models"))
V2 = "mobilenet_v2_1.0_224_quant.tflite"
V1 = "mobilenet_v1_0.25_128_quant.tflite"
WIDTH, HEIGHT = 640, 480


def synthetic(fps: float = 0.0) -> Any:
    from edgedet.config import build_config
    from edgedet.frames import open_source

    cfg = build_config({"source": {"type": "synthetic", "width": WIDTH, "height": HEIGHT, "fps": fps,
                                   "pattern": "gradient"}}, "bench")
    return open_source(cfg.source)


def bare_fps(interpreter: Any, seconds: float) -> tuple[float, float]:
    """invoke() in a loop on a prepared tensor: frames per second and the median invoke in ms."""
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], np.random.default_rng(0).integers(0, 256, detail["shape"])
                           .astype(detail["dtype"]))
    times = []
    started = time.perf_counter()
    while (now := time.perf_counter()) - started < seconds:
        interpreter.invoke()
        times.append(time.perf_counter() - now)
    return len(times) / (time.perf_counter() - started), statistics.median(times) * 1e3


def loop_run(classifier: Any, seconds: float, overlap: Optional[bool] = None) -> dict[str, Any]:
    """The daemon's FrameLoop on the synthetic 640x480 source at fps 0, per-frame stages kept."""
    from edgedet.loop import FrameLoop

    stamps: list[float] = []
    stages: list[dict[str, float]] = []

    def on_frame(result: Any) -> None:
        stamps.append(time.perf_counter())
        stages.append(result.latency_ms)

    kwargs: dict[str, Any] = {"overlap": overlap} if overlap is not None else {}
    loop = FrameLoop(classifier, synthetic(), [], duration_s=seconds, on_frame=on_frame, **kwargs)
    started = time.perf_counter()
    stats = loop.run()
    elapsed = time.perf_counter() - started
    gaps = np.diff(stamps) * 1e3
    out: dict[str, Any] = {"fps": stats.frames_processed / elapsed, "frame_gap_ms": float(np.median(gaps))}
    for stage in ("capture_wait", "preprocess", "inference", "postprocess", "frame_age"):
        out[stage] = float(np.median([s[stage] for s in stages]))
    # the rest of a frame's time: the loop's bookkeeping, result, stats and sinks (on the loop's thread)
    busy = [s["capture_wait"] + s["preprocess"] + s["inference"] + s["postprocess"] for s in stages[1:]]
    out["loop_rest"] = float(np.median(gaps - np.asarray(busy))) if overlap is not True else None
    return out


def least_serial_fps(classifier: Any, seconds: float) -> tuple[float, float, float]:
    """The least any serial loop does per frame: read the synthetic 640x480 source's next frame, preprocess it
    into the classifier's input tensor, invoke; no ranking, statistics or sinks. Frames per second, median
    preprocess and median invoke (ms). Its ratio to the bare loop bounds edgedet's from above: a camera's frames
    arrive as cold as these (written by DMA), so the resize's cost after an invoke is part of any loop's."""
    source = synthetic()
    source.open()
    view = classifier._slots[0].input_view
    interpreter = classifier._interpreter
    pre, inv = [], []
    try:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            frame = source.read(1.0)
            t0 = time.perf_counter()
            classifier.preprocessor.into(frame.image, view()[0])
            t1 = time.perf_counter()
            interpreter.invoke()
            inv.append(time.perf_counter() - t1)
            pre.append(t1 - t0)
        return len(inv) / (time.perf_counter() - started), statistics.median(pre) * 1e3, statistics.median(inv) * 1e3
    finally:
        source.close()


def cmd_cpu(args: argparse.Namespace) -> None:
    from edgedet.loop import auto_threads
    from edgedet.model.classifier import Classifier
    from edgedet.model.config import ModelConfig
    from edgedet.model.runtime import make_interpreter, select_runtime

    runtime = select_runtime("auto")
    for name in (V2, V1):
        model = args.models / name
        bares = {t: make_interpreter(model, runtime, t) for t in (1, 2)}
        classifier = Classifier.from_config(ModelConfig(path=model), auto_threads=auto_threads())

        def bare(bares: dict[int, Any] = bares) -> tuple[float, float]:
            return max(bare_fps(bares[t], args.seconds / 2) for t in (1, 2))

        def least(classifier: Any = classifier) -> tuple[float, float, float]:
            return least_serial_fps(classifier, args.seconds)

        def ours(classifier: Any = classifier) -> dict[str, Any]:
            return loop_run(classifier, args.seconds)

        sides: dict[str, Callable[[], Any]] = {"bare": bare, "least": least, "ours": ours}
        rounds = interleaved(args.pairs, sides)

        def spread(values: list[float]) -> str:
            return f"median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"

        bare_rates = [r["bare"][0] for r in rounds]
        least_rates = [r["least"][0] for r in rounds]
        our_rates = [r["ours"]["fps"] for r in rounds]
        print(f"{name} ({classifier.num_threads} threads, preprocess {classifier.preprocessor.backend}), "
              f"{args.pairs} rounds (bare, least serial loop, edgedet; order reversed every other round):")
        print(f"  edgedet run / best bare over 1 and 2 threads: "
              f"{spread([o / b for o, b in zip(our_rates, bare_rates)])}")
        print(f"  least serial loop (read, preprocess, invoke) / best bare: "
              f"{spread([m / b for m, b in zip(least_rates, bare_rates)])}; edgedet / least: "
              f"{spread([o / m for o, m in zip(our_rates, least_rates)])}")
        print(f"  fps: bare {' '.join(f'{v:.1f}' for v in bare_rates)}; "
              f"least {' '.join(f'{v:.1f}' for v in least_rates)}; edgedet {' '.join(f'{v:.1f}' for v in our_rates)}")
        print(f"  least serial loop (medians, ms): preprocess {statistics.median(r['least'][1] for r in rounds):.3f}, "
              f"invoke {statistics.median(r['least'][2] for r in rounds):.3f}; bare invoke "
              f"{statistics.median(r['bare'][1] for r in rounds):.3f}")
        med = {k: statistics.median(r["ours"][k] for r in rounds) for k in
               ("frame_gap_ms", "capture_wait", "preprocess", "inference", "postprocess", "loop_rest")}
        outside = med["frame_gap_ms"] - med["inference"]
        print(f"  per frame (medians, ms): gap {med['frame_gap_ms']:.3f} = inference {med['inference']:.3f} + "
              f"outside {outside:.3f} [capture {med['capture_wait']:.3f}, preprocess {med['preprocess']:.3f}, "
              f"postprocess {med['postprocess']:.3f}, loop rest {med['loop_rest']:.3f}]")


def cmd_overlap(args: argparse.Namespace) -> None:
    from edgedet.model.classifier import Classifier
    from edgedet.model.config import ModelConfig
    from edgedet.model.simulated import simulated_accelerator

    model = args.models / V2
    for invoke_s in (0.0025, 0.001):
        classifier = Classifier.from_config(ModelConfig(path=model, num_threads=1),
                                            interpreter_factory=simulated_accelerator(invoke_s))

        def serial(classifier: Any = classifier) -> dict[str, Any]:
            return loop_run(classifier, args.seconds, overlap=False)

        def overlapped(classifier: Any = classifier) -> dict[str, Any]:
            return loop_run(classifier, args.seconds, overlap=True)

        bare = [bare_fps(classifier._interpreter, 1.0) for _ in range(3)]
        runs = paired(args.pairs, serial, overlapped)
        nominal = 1 / invoke_s
        bare_rate = statistics.median(b[0] for b in bare)
        print(f"SIMULATED accelerator, invoke = sleep {invoke_s * 1e3:.1f} ms (GIL released), {V2} scores, "
              f"640x480 frames, {args.pairs} pairs:")
        print(f"  bare stand-in loop: {bare_rate:.1f} fps (its sleep takes {statistics.median(b[1] for b in bare):.3f}"
              f" ms), 1/invoke = {nominal:.0f} fps")
        for label, index in (("serial", 0), ("overlapped", 1)):
            fps = [r[index]["fps"] for r in runs]
            age = statistics.median(r[index]["frame_age"] for r in runs)
            inference = statistics.median(r[index]["inference"] for r in runs)
            gap = statistics.median(r[index]["frame_gap_ms"] for r in runs)
            print(f"  {label:10s}: fps {statistics.median(fps):.1f} = {statistics.median(fps) / nominal:.3f} of "
                  f"1/invoke, {statistics.median(fps) / bare_rate:.3f} of the bare stand-in; frame age p50 "
                  f"{age:.3f} ms = set invoke + {age - invoke_s * 1e3:.3f} (invoke as timed in the loop "
                  f"{inference:.3f} ms; age - that {age - inference:.3f}); "
                  f"median gap between results {gap:.3f} ms (fps counts the slow ones too)")
        gains = [o["fps"] / s["fps"] for s, o in runs]
        print(f"  overlapped / serial, per pair: median {statistics.median(gains):.3f}")
    for cpu_model, threads in ((V2, 1), (V2, 2), (V1, 1), (V1, 2)):
        cpu = Classifier.from_config(ModelConfig(path=args.models / cpu_model, num_threads=threads))

        def serial_cpu(cpu: Any = cpu) -> dict[str, Any]:
            return loop_run(cpu, args.seconds, overlap=False)

        def overlapped_cpu(cpu: Any = cpu) -> dict[str, Any]:
            return loop_run(cpu, args.seconds, overlap=True)

        runs = paired(args.pairs, serial_cpu, overlapped_cpu)
        gains = [o["fps"] / s["fps"] for s, o in runs]
        print(f"CPU only, {cpu_model}, {threads} thread(s): overlapped / serial fps, per pair: median "
              f"{statistics.median(gains):.3f} (serial {statistics.median(s['fps'] for s, _ in runs):.1f} fps)")


BARE_AT_RATE = """
import sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
model, fps, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
it = Interpreter(model_path=model, num_threads=2)
it.allocate_tensors()
d = it.get_input_details()[0]
it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
it.invoke()
print("ready", flush=True)
sys.stdin.readline()
n, due, end = 0, time.monotonic(), time.monotonic() + seconds
while time.monotonic() < end:
    due += 1 / fps
    it.invoke()
    n += 1
    time.sleep(max(0.0, due - time.monotonic()))
print(n, flush=True)
sys.stdin.readline()
"""


def bare_cpu_per_invoke(model: Path, fps: float, seconds: float) -> tuple[float, float]:
    proc = subprocess.Popen([sys.executable, "-c", BARE_AT_RATE, str(model), str(fps), str(seconds)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdin and proc.stdout
    proc.stdout.readline()
    before = task_cpu_ns(proc.pid)
    proc.stdin.write("\n")
    proc.stdin.flush()
    count = int(proc.stdout.readline())
    used = cpu_between(before, task_cpu_ns(proc.pid))
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait()
    return used / count * 1e3, count / seconds


def daemon_cmd(config: Path, frames: int = 0, extra: tuple[str, ...] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "edgedet", "--log-level", "warning", "run", "--config", str(config),
           "--set", "source.type=synthetic", "--set", f"source.width={WIDTH}", "--set", f"source.height={HEIGHT}",
           "--set", "publish.console=false", *extra]
    return cmd + (["--max-frames", str(frames)] if frames else [])


def daemon_cpu_per_frame(config: Path, fps: float, seconds: float,
                         env: Optional[dict[str, str]] = None) -> tuple[float, float]:
    """``edgedet run`` at a fixed source rate: CPU milliseconds per frame over a window after warm-up (in which
    the loop has settled on reading the source itself or through its capture thread), and the rate."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        stats_file = Path(tmp) / "stats.json"
        proc = subprocess.Popen(daemon_cmd(config, extra=("--set", f"source.fps={fps}", "--duration",
                                                          str(seconds + 3), "--stats-file", str(stats_file))),
                                cwd=tmp, env=env or DAEMON_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)  # model loaded, first frames done
        before, t0 = task_cpu_ns(proc.pid), time.monotonic()
        time.sleep(seconds - 0.5)
        used, span = cpu_between(before, task_cpu_ns(proc.pid)), time.monotonic() - t0
        proc.wait()
        stats = json.loads(stats_file.read_text())
    rate = stats["fps_out"]
    return used / (rate * span) * 1e3, rate


def bundled_model() -> Path:
    from edgedet.model.config import default_model_path

    path = default_model_path()
    if path is None:
        raise SystemExit("the bundled model is not found")
    return path


def bundled_model_config(folder: Path) -> Path:
    """A config file in ``folder`` that names the bundled model and leaves the rest at the defaults."""
    config = folder / "c.yaml"
    config.write_text(f"model:\n  path: {bundled_model()}\n")
    return config


def cmd_cpu_per_frame(args: argparse.Namespace) -> None:
    model = bundled_model()
    with tempfile.TemporaryDirectory() as tmp:
        config = bundled_model_config(Path(tmp))
        runs = paired(args.pairs, lambda: daemon_cpu_per_frame(config, 30.0, args.seconds),
                      lambda: bare_cpu_per_invoke(model, 30.0, args.seconds))
    extra = [d[0] - b[0] for d, b in runs]
    print(f"{model.name}, 30 fps source, MQTT off, {args.pairs} pairs of {args.seconds:.0f} s: CPU per frame "
          f"edgedet run {' '.join(f'{d[0]:.3f}' for d, _ in runs)} ms, bare invoke loop "
          f"{' '.join(f'{b[0]:.3f}' for _, b in runs)} ms; edgedet's own cost per frame: median "
          f"{statistics.median(extra):.3f} ms (min {min(extra):.3f}, max {max(extra):.3f}); "
          f"rates {statistics.median(d[1] for d, _ in runs):.1f} / {statistics.median(b[1] for _, b in runs):.1f} fps")


# The probes' own resident MB, as rss_mb reads it for another process.
RSS_OF_SELF = ("import os\n"
               "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20")


def rss_mb(pid: int) -> float:
    return rss_and_file_mb(pid)[0]


def rss_and_file_mb(pid: int) -> tuple[float, float]:
    """Resident MB, and how much of it maps files (shared libraries, the model; statm's "shared")."""
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
    return int(fields[1]) * page_mb, int(fields[2]) * page_mb


def daemon_rss(config: Path, frames: int, extra: tuple[str, ...] = (),
               env: Optional[dict[str, str]] = None) -> tuple[list[tuple[float, float, float]], int]:
    """``edgedet run`` (of ``env``'s checkout, this one by default) for ``frames`` frames at fps 0: its RSS and the
    file-backed part of it, sampled every 50 ms as (seconds, MB, MB), and its exit code."""
    proc = subprocess.Popen(daemon_cmd(config, frames, ("--set", "source.fps=0", *extra)),
                            cwd=config.parent, env=env or DAEMON_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    samples: list[tuple[float, float, float]] = []
    started = time.monotonic()
    while proc.poll() is None:
        try:
            value, files = rss_and_file_mb(proc.pid)
            if value > 0:
                samples.append((time.monotonic() - started, value, files))
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.05)
    return samples, proc.returncode


def steady(samples: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """The samples after the first tenth of the run (start-up) and before the last (the loop has ended and the
    run is tearing down, freeing the source's frames: that drop is not the frame loop's memory)."""
    total = samples[-1][0]
    return [s for s in samples if total / 10 <= s[0] <= total * 9 / 10]


@contextlib.contextmanager
def local_mosquitto() -> Iterator[int]:
    """A mosquitto on a free loopback port for the runs inside the block; yields the port."""
    port = free_port()
    broker = subprocess.Popen(["mosquitto", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        yield port
    finally:
        broker.terminate()
        broker.wait()


def mqtt_config(folder: Path, port: int) -> Path:
    """The bundled model with MQTT on, to a local broker on ``port``."""
    config = folder / "c.yaml"
    config.write_text(f"model:\n  path: {bundled_model()}\nmqtt:\n  enabled: true\n  host: 127.0.0.1\n"
                      f"  port: {port}\n")
    return config


SOURCE_PROBE = RSS_OF_SELF + """
import ctypes, sys
import edgedet.pipeline
from edgedet.config import build_config
from edgedet.frames import open_source
from edgedet.frames.synthetic import DEFAULT_CYCLE
width, height = int(sys.argv[1]), int(sys.argv[2])
cfg = build_config({"source": {"type": "synthetic", "width": width, "height": height}}, "probe")
before = rss()
source = open_source(cfg.source)
source.open()
ctypes.CDLL("libc.so.6").malloc_trim(0)  # the drawing's freed temporaries: not held, so not counted
print(f"{rss() - before:.1f} {DEFAULT_CYCLE} {DEFAULT_CYCLE * width * height * 3 / 2**20:.1f}")
"""


def cmd_memory(args: argparse.Namespace) -> None:
    model = bundled_model()
    runs = {}
    with local_mosquitto() as port, tempfile.TemporaryDirectory() as tmp:
        config = mqtt_config(Path(tmp), port)
        # As this venv has it (OpenCV installed: the default preprocess backend uses it), and as a machine
        # without OpenCV runs (scripts/install.sh does not install it): OpenCV is then never imported.
        for label, extra in (("OpenCV installed", ()), ("no OpenCV (backend numpy)",
                                                        ("--set", "model.preprocess.backend=numpy"))):
            runs[label] = daemon_rss(config, args.frames, extra)
    for label, (samples, code) in runs.items():
        window = steady(samples)
        kept = [rss for _, rss, _ in window]
        last_rss, last_files = window[-1][1:]
        print(f"edgedet run, {model.name}, MQTT on (local mosquitto), {label}, {args.frames} frames at fps 0 in "
              f"{samples[-1][0]:.0f} s (exit {code}): steady RSS (10 % to 90 % of the run) first {kept[0]:.1f} MB, "
              f"last {kept[-1]:.1f} MB (anonymous {last_rss - last_files:.1f}, mapped files {last_files:.1f}), max "
              f"{max(kept):.1f} MB, growth {kept[-1] - kept[0]:+.1f} MB; peak of the whole run "
              f"{max(s[1] for s in samples):.1f} MB")
    probe = ("import importlib, sys, os\n"
             "from pathlib import Path\n"
             f"{RSS_OF_SELF}\n"
             "steps = sys.argv[2].split('|')\n"
             "for step in steps:\n"
             "    exec(step)\n"
             "    print(f'{rss():.1f}', end=' ')\n")
    bare = ("import numpy as np; from ai_edge_litert.interpreter import Interpreter;"
            f"it = Interpreter(model_path='{model}', num_threads=2); it.allocate_tensors(); it.invoke()")
    # Our config classes last before OpenCV: what they add beyond the modules the daemon loads anyway
    steps = [bare, "import yaml, PIL.Image", "import paho.mqtt.client", "import edgedet.config", "import cv2"]
    out = subprocess.run([sys.executable, "-c", probe, "", "|".join(steps)], cwd=HERE, env=DAEMON_ENV,
                         capture_output=True, text=True).stdout
    values = out.split()
    print("RSS of a bare interpreter with the same model, then adding imports (MB): "
          + ", ".join(f"{label} {value}" for label, value in
                      zip(("bare interpreter", "+yaml+Pillow", "+paho", "+edgedet.config", "+cv2"),
                          values)))
    # What the stand-in camera itself holds: a real camera's frame buffers and library replace it on a Pi.
    share, count, frames_mb = subprocess.run([sys.executable, "-c", SOURCE_PROBE, str(WIDTH), str(HEIGHT)],
                                             cwd=HERE, env=DAEMON_ENV, capture_output=True, text=True).stdout.split()
    print(f"of which the synthetic source (as the runs above: scenes, {WIDTH}x{HEIGHT}) holds {share} MB once opened: "
          f"{frames_mb} MB its {count} frames, the rest the modules that draw them")
    modules = subprocess.run(
        [sys.executable, "-c", "import sys; from edgedet.pipeline import Pipeline; "
         "print(' '.join(m for m in ('cv2', 'PIL', 'paho', 'yaml', 'pydantic', 'edgedet.host', 'edgedet.bench') "
         "if m in sys.modules))"], cwd=HERE, env=DAEMON_ENV, capture_output=True, text=True).stdout.strip()
    print(f"imported by edgedet.pipeline: {modules}")
    print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB peak)")


def thread_cpu_ns() -> int:
    return int(Path(f"/proc/self/task/{threading.get_native_id()}/schedstat").read_text().split()[0])


def resize_after_invoke(classifier: Any, frames: list[np.ndarray], fps: float, count: int,
                        decode: Optional[Any] = None) -> float:
    """Median ms of preprocessing a frame into the input tensor right after an invoke, as the loop does
    (``fps`` 0: back to back; else on a schedule, the caches as cold as a camera's frame leaves them);
    ``decode`` first turns each frame into RGB (the Pi camera's YUV420 lores frames)."""
    times = []
    due = time.monotonic()
    for n in range(count):
        if fps:
            due += 1 / fps
            time.sleep(max(0.0, due - time.monotonic()))
        classifier._interpreter.invoke()
        started = time.perf_counter()
        frame = frames[n % len(frames)]
        classifier._preprocess_into(frame if decode is None else decode(frame), classifier._slots[0].input_view()[0])
        times.append(time.perf_counter() - started)
    return statistics.median(times[count // 10:]) * 1e3


def lores_frames(width: int, height: int) -> list[np.ndarray]:
    """YUV420 buffers laid out as picamera2 hands over a lores stream, (h*3/2) rows of a padded stride; the
    padding here is to 64 bytes, an assumption (a Pi's alignment may differ; it changes what is copied little)."""
    stride = -(-width // 64) * 64
    return [np.random.default_rng(n).integers(16, 236, (height * 3 // 2, stride), np.uint8) for n in range(8)]


def wake_cpu_us(count: int) -> tuple[float, float]:
    """CPU per wake-up of a thread: woken by its own timer (time.sleep to a 30 fps schedule, as the capture
    thread waits for a synthetic frame) and by another thread releasing a lock (the frame handed over)."""
    timer: list[float] = []

    def sleeper() -> None:
        before = thread_cpu_ns()
        for _ in range(count):
            time.sleep(1 / 30)
        timer.append((thread_cpu_ns() - before) / count / 1e3)

    thread = threading.Thread(target=sleeper)
    thread.start()
    thread.join()
    ready = threading.Lock()
    ready.acquire()
    woken: list[float] = []

    def waiter() -> None:
        before = thread_cpu_ns()
        for _ in range(count):
            ready.acquire(timeout=1.0)
        woken.append((thread_cpu_ns() - before) / count / 1e3)

    thread = threading.Thread(target=waiter)
    thread.start()
    for _ in range(count):
        time.sleep(1 / 30)
        ready.release()
    thread.join()
    return timer[0], woken[0]


def cmd_floors(args: argparse.Namespace) -> None:
    """What edgedet must do per frame and a bare invoke loop does not, timed alone: the resize of the 640x480
    frame, and the capture thread's wake-ups. They bound the CPU-only ratios and the 30 fps cost from below.
    Beside it, what the Pi camera's path costs instead: its ISP scales a lores stream to the model's size,
    and the CPU converts that YUV420 frame to RGB (edgedet.frames.picamera2, as the daemon does)."""
    from edgedet.frames.picamera2 import lores_size_for, yuv420_to_rgb
    from edgedet.model.classifier import Classifier
    from edgedet.model.config import ModelConfig

    frames = [np.ascontiguousarray(np.roll(np.random.default_rng(n).integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8),
                                           n, axis=1)) for n in range(8)]
    print(f"preprocess of a {WIDTH}x{HEIGHT} frame into the input tensor right after an invoke (median ms, "
          f"{args.frames} frames); the ratio fps / bare fps cannot exceed invoke / (invoke + resize):")
    for model in (args.models / V2, args.models / V1, bundled_model()):
        classifier = Classifier.from_config(ModelConfig(path=model))
        invoke = bare_fps(classifier._interpreter, 2.0)[1]
        hot = resize_after_invoke(classifier, frames, 0.0, args.frames)
        cold = resize_after_invoke(classifier, frames, 30.0, min(args.frames, 300))
        width, height = lores_size_for(classifier.input_size, (WIDTH, HEIGHT))
        lores = resize_after_invoke(classifier, lores_frames(width, height), 30.0, min(args.frames, 300),
                                    lambda buffer, w=width, h=height: yuv420_to_rgb(buffer, w, h))
        print(f"  {model.name} ({classifier.preprocessor.backend}, {classifier.num_threads} threads): invoke "
              f"{invoke:.3f}, preprocess back to back {hot:.3f} (bound {invoke / (invoke + hot):.3f}), at 30 fps "
              f"{cold:.3f}; a Pi camera's {width}x{height} YUV420 lores frame instead, at 30 fps: {lores:.3f}")
    timer, woken = wake_cpu_us(150)
    print(f"CPU per wake-up of a thread, 150 at 30 fps: by its own timer (time.sleep) {timer:.1f} us, by another "
          f"thread (a lock released) {woken:.1f} us")


def minimal_overlapped(classifier: Any, seconds: float, frames: list[np.ndarray], resize: bool) -> float:
    """fps of the least an overlapped loop must do, on the classifier's two (simulated) interpreters taking
    turns: per frame one hand-over to a second thread and one back (a queue each way) and the invoke. With
    ``resize`` the second thread also copies the last frame's scores out and preprocesses the next frame into
    the idle interpreter (Classifier.prepare) as soon as it is asked (the earliest start, the most favourable
    to fps); without, it answers at once."""
    import queue

    assert classifier.double_buffered()
    slots = classifier._slots
    turn = [classifier.prepare(frames[0]).slot]  # the interpreter invoked next
    requests: queue.SimpleQueue[Optional[int]] = queue.SimpleQueue()
    results: queue.SimpleQueue[int] = queue.SimpleQueue()

    def helper() -> None:
        while (n := requests.get()) is not None:
            idle = 1 - turn[0]  # turn[0] is invoking
            if resize:  # the idle interpreter: the scores of the frame before out, the next frame in
                slots[idle].output_view().tobytes()
                idle = classifier.prepare(frames[n % len(frames)]).slot
            turn[0] = idle
            results.put(n)

    thread = threading.Thread(target=helper, daemon=True)
    thread.start()
    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)  # as the frame loop sets it
    results.put(0)
    count, started = 0, time.perf_counter()
    try:
        while time.perf_counter() - started < seconds:
            n = results.get()
            interpreter = slots[turn[0]].interpreter
            requests.put(n + 1)
            interpreter.invoke()
            count += 1
        return count / (time.perf_counter() - started)
    finally:
        requests.put(None)
        thread.join()
        results.get()
        sys.setswitchinterval(previous)


def cmd_overlap_floor(args: argparse.Namespace) -> None:
    """The bare stand-in loop against the least an overlapped loop does (minimal_overlapped), in alternating
    rounds: how close to 1/invoke any loop with one hand-over per frame gets on this machine."""
    from edgedet.model.classifier import Classifier
    from edgedet.model.config import ModelConfig
    from edgedet.model.simulated import simulated_accelerator

    frames = [np.ascontiguousarray(np.random.default_rng(n).integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8))
              for n in range(8)]
    for invoke_s in (0.0025, 0.001):
        classifier = Classifier.from_config(ModelConfig(path=args.models / V2, num_threads=1),
                                            interpreter_factory=simulated_accelerator(invoke_s))
        sides: dict[str, Any] = {
            "bare stand-in loop (invoke only)": lambda c=classifier: bare_fps(c._interpreter, args.seconds)[0],
            "+ a hand-over each way, two interpreters taking turns":
                lambda c=classifier: minimal_overlapped(c, args.seconds, frames, False),
            f"+ the other thread copying the scores out and preprocessing a {WIDTH}x{HEIGHT} frame meanwhile":
                lambda c=classifier: minimal_overlapped(c, args.seconds, frames, True),
            "edgedet's overlapped loop (loop_run)": lambda c=classifier: loop_run(c, args.seconds, overlap=True)["fps"],
        }
        names = list(sides)
        rates: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(args.pairs):
            for name in names if round_ % 2 == 0 else names[::-1]:
                rates[name].append(sides[name]() * invoke_s)
        print(f"SIMULATED accelerator, invoke = sleep {invoke_s * 1e3:.1f} ms, {args.pairs} rounds of "
              f"{args.seconds:.0f} s (order alternating): fps / (1/invoke), median (min-max)")
        for name in names:
            values = rates[name]
            print(f"  {name}: {statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[1])
    parser.add_argument("what", choices=("cpu", "overlap", "cpu-per-frame", "memory", "floors", "overlap-floor"))
    parser.add_argument("--models", type=Path, default=SHARED)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--frames", type=int, default=20000)
    args = parser.parse_args()
    {"cpu": cmd_cpu, "overlap": cmd_overlap, "cpu-per-frame": cmd_cpu_per_frame, "memory": cmd_memory,
     "floors": cmd_floors, "overlap-floor": cmd_overlap_floor}[args.what](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
