"""Frame-loop fps with MQTT publishing to a broker that is down vs no MQTT at all.

Each frame does fixed work (a real TFLite MobileNet with --model, else a numpy stand-in) and then
``MqttSink.handle`` (every_frame: one detection message per frame). The broker is a free loopback port
with nothing listening, so paho keeps retrying in the background and the outbox overflows.
Blocks alternate (none, down, none, down, ...) so machine noise hits both alike; wall and CPU fps.

    python benchmarks/mqtt_down.py --frames 10000 \
        [--model ../shared/models/mobilenet_v1_0.25_128_quant.tflite]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgedet.publish.config import MqttConfig, PublishConfig
from edgedet.publish.messages import rss_mb
from edgedet.publish.mqtt import MqttPublisher
from edgedet.publish.sink import MqttSink
from edgedet.results import Class, FrameResult


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_work(model: Path | None) -> Callable[[], None]:
    if model is None:
        rng = np.random.default_rng(0)
        a = rng.random((96, 96), dtype=np.float32)

        def work() -> None:
            np.matmul(a, a)

        return work
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model), num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    frame = np.zeros(detail["shape"], dtype=detail["dtype"])

    def work() -> None:
        interpreter.set_tensor(detail["index"], frame)
        interpreter.invoke()

    return work


def run_block(first_id: int, frames: int, work: Callable[[], None],
              sink: MqttSink | None) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for ``frames`` frames."""
    wall, cpu = time.perf_counter(), time.process_time()
    for frame_id in range(first_id, first_id + frames):
        work()
        if sink is not None:
            sink.handle(FrameResult(frame_id, time.time(), time.monotonic(), [Class(1, 0.9, "cat")],
                                    {"preprocess": 0.1, "inference": 1.0, "postprocess": 0.1, "total": 1.2},
                                    1.5, "bench"))
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10000, help="frames per mode")
    parser.add_argument("--block", type=int, default=200, help="frames per alternating block")
    parser.add_argument("--outbox-max", type=int, default=10000)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()

    work = make_work(args.model)
    run_block(0, 200, work, None)  # warm-up
    cfg = MqttConfig(enabled=True, host="127.0.0.1", port=free_port(), reconnect_min_s=0.1,
                     reconnect_max_s=0.5, outbox_max=args.outbox_max)
    publisher = MqttPublisher(cfg, "bench")
    sink = MqttSink(publisher, PublishConfig(mode="every_frame"), model_name="bench")
    publisher.start()
    # Alternate short blocks so the noise of a shared machine hits both modes alike.
    totals = {"none": [0.0, 0.0], "down": [0.0, 0.0]}
    block_fps: dict[str, list[float]] = {"none": [], "down": []}
    done = 0
    while done < args.frames:
        for mode, target in (("none", None), ("down", sink)):
            wall, cpu = run_block(done, args.block, work, target)
            totals[mode][0] += wall
            totals[mode][1] += cpu
            block_fps[mode].append(args.block / wall)
        done += args.block
    stats = publisher.stats()
    publisher.stop(0)

    def fps(mode: str, index: int) -> float:
        return done / totals[mode][index]

    result = {
        "work": args.model.name if args.model else "numpy 96x96 matmul",
        "frames_per_mode": done, "block": args.block, "outbox_max": args.outbox_max,
        "fps_wall": {"no_mqtt": round(fps("none", 0), 1), "broker_down": round(fps("down", 0), 1)},
        "fps_wall_median_block": {m: round(statistics.median(v), 1) for m, v in block_fps.items()},
        "fps_cpu": {"no_mqtt": round(fps("none", 1), 1), "broker_down": round(fps("down", 1), 1)},
        "change_pct_wall": round(100 * (fps("down", 0) - fps("none", 0)) / fps("none", 0), 2),
        "change_pct_wall_median_block": round(100 * (statistics.median(block_fps["down"])
                                                     - statistics.median(block_fps["none"]))
                                              / statistics.median(block_fps["none"]), 2),
        "change_pct_cpu": round(100 * (fps("down", 1) - fps("none", 1)) / fps("none", 1), 2),
        "mqtt": stats, "rss_mb": rss_mb(),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
