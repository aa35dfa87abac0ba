"""A small publisher process for tests: MqttSink + MqttPublisher fed with synthetic FrameResults.

Stands in for the daemon until the frame loop exists (the lead also tests the full daemon). SIGTERM/SIGINT
-> clean stop (offline retained). Prints ``READY`` once connected, and one JSON summary line at the end.

    python tests/mqtt_publisher_proc.py --port 1883 --device-id cam1 --count 500 --interval 0.001
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time

from edgedet.loop import STAGES, RollingStats
from edgedet.publish.config import HomeAssistantConfig, MqttConfig, PublishConfig
from edgedet.publish.mqtt import MqttPublisher
from edgedet.publish.sink import MqttSink
from edgedet.results import Class, FrameResult

LABELS = ("cat", "dog", "bird")


def synthetic_result(frame_id: int) -> FrameResult:
    label_index = (frame_id // 10) % len(LABELS)
    top = [Class(label_index + 1, 0.9, LABELS[label_index]), Class(9, 0.05, "other")]
    now_wall, now_mono = time.time(), time.monotonic()
    latency = {"capture_wait": 0.1, "preprocess": 0.5, "inference": 2.0, "postprocess": 0.1, "total": 2.7}
    return FrameResult(frame_id, now_wall, now_mono, top, latency, 3.0, "synthetic")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device-id", required=True)
    parser.add_argument("--protocol", default="3.1.1", choices=["3.1.1", "5"])
    parser.add_argument("--count", type=int, default=0, help="frames to publish; 0 = until a signal")
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--flush-timeout", type=float, default=10.0)
    parser.add_argument("--homeassistant", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    cfg = MqttConfig(enabled=True, host=args.host, port=args.port, protocol=args.protocol,
                     reconnect_min_s=0.1, reconnect_max_s=1.0, flush_timeout_s=args.flush_timeout)
    publisher = MqttPublisher(cfg, args.device_id)
    sink = MqttSink(publisher, PublishConfig(), model_name="synthetic",
                    ha_cfg=HomeAssistantConfig(enabled=args.homeassistant))
    sink.publish_info(model={"name": "synthetic", "label_count": len(LABELS)},
                      runtime={"name": "none", "version": "0", "threads": 1},
                      delegate={"requested": "cpu", "active": "cpu", "device": None},
                      source={"type": "synthetic", "resolution": [64, 48]})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    publisher.start()
    deadline = time.monotonic() + 10
    while not publisher.connected and time.monotonic() < deadline and not stop.is_set():
        time.sleep(0.01)
    print("READY" if publisher.connected else "NOT-CONNECTED", flush=True)

    frame_id = 0
    loop_stats = RollingStats()  # the frame loop's own statistics, fed with the synthetic results
    while not stop.is_set() and (args.count == 0 or frame_id < args.count):
        result = synthetic_result(frame_id)
        sink.handle(result)
        loop_stats.captured()
        loop_stats.processed({s: result.latency_ms.get(s, result.frame_age_ms) for s in STAGES})
        frame_id += 1
        stop.wait(args.interval)
    sink.on_stats(loop_stats.snapshot(frames_dropped=0))
    sink.close()
    print(json.dumps({"published": sink.seq, "run_id": sink.run_id, "mqtt": publisher.stats()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
