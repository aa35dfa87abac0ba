"""A fleet of edgedet publishers against one mosquitto that is restarted: how the reconnects spread in time,
the broker's peak connection rate, and what is lost, with and without mqtt.reconnect_jitter.

Each of ``--procs`` worker processes runs ``--per-proc`` of edgedet's own ``MqttSink``/``MqttPublisher`` (the
default backoff bounds, 1..60 s), each publishing one detection every ``--interval`` s. The broker is stopped
for ``--down`` s, then started; a persistent QoS 1 subscriber checks every (device, seq).

    python benchmarks/mqtt_fleet.py --procs 4 --per-proc 50 --jitter 0.5 0
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from paired import checkout_env

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def worker(args: argparse.Namespace) -> int:
    """One process: ``per_proc`` publishers; prints one JSON line with each one's reconnect time."""
    from mqtt_publisher_proc import synthetic_result

    from edgedet.publish.config import MqttConfig, PublishConfig
    from edgedet.publish.mqtt import MqttPublisher
    from edgedet.publish.sink import MqttSink

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cfg = MqttConfig(enabled=True, host="127.0.0.1", port=args.port, reconnect_jitter=args.jitter,
                     flush_timeout_s=30.0)
    sinks = [MqttSink(MqttPublisher(cfg, f"fleet{args.index}-{i}"), PublishConfig(), model_name="synthetic")
             for i in range(args.per_proc)]
    for sink in sinks:
        sink.publisher.start()
    up_once: set[int] = set()  # connected at least once: a later disconnect is the broker restart
    down_seen: set[int] = set()
    back: dict[int, float] = {}

    def watch() -> None:  # when each publisher is connected again, to 5 ms
        while not stop.is_set():
            for i, sink in enumerate(sinks):
                connected = sink.publisher.connected
                if connected:
                    up_once.add(i)
                if not connected and i in up_once:
                    down_seen.add(i)
                elif connected and i in down_seen and i not in back:
                    back[i] = time.time()
            stop.wait(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    frame = 0
    while not stop.is_set():
        frame += 1
        for sink in sinks:
            sink.handle(synthetic_result(frame))
        stop.wait(args.interval)
    watcher.join()
    for sink in sinks:
        sink.close(30.0)
    print(json.dumps({"back": list(back.values()), "seqs": {s.publisher.device_id: s.seq for s in sinks}}))
    return 0


def run(jitter: float, args: argparse.Namespace) -> dict[str, object]:
    from mosquitto import Collector, Mosquitto

    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker", persistence=True).start()
        sub = Collector(broker, "edgedet/+/detection", client_id=f"fleet-sub-{jitter}", persistent=True)
        env = checkout_env(REPO)
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--index", str(n), "--port",
                                   str(broker.port), "--per-proc", str(args.per_proc), "--jitter", str(jitter),
                                   "--interval", str(args.interval)], stdout=subprocess.PIPE, env=env, text=True)
                 for n in range(args.procs)]
        time.sleep(args.warmup)
        broker.stop()
        time.sleep(args.down)
        started = time.time()
        broker.start()
        time.sleep(args.after)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        results = [json.loads(proc.communicate(timeout=120)[0].strip().splitlines()[-1]) for proc in procs]
        seqs: dict[str, int] = {}
        backs: list[float] = []
        for result in results:
            seqs.update(result["seqs"])
            backs += [t - started for t in result["back"]]
        expected = sum(seqs.values())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = {(t.split("/")[1], json.loads(p)["seq"]) for t, p, _ in list(sub.received)}
            if len(got) >= expected:
                break
            time.sleep(0.5)
        lost = sum(1 for device, top in seqs.items() for s in range(1, top + 1) if (device, s) not in got)
        attempts = broker.log_text().count("New connection from")
        sub.close()
        broker.stop()
    backs.sort()
    buckets: dict[int, int] = {}
    for t in backs:
        buckets[int(t * 10)] = buckets.get(int(t * 10), 0) + 1
    return {"jitter": jitter, "publishers": len(seqs), "reconnected": len(backs),
            "first_s": round(backs[0], 2) if backs else None, "median_s": round(backs[len(backs) // 2], 2)
            if backs else None, "last_s": round(backs[-1], 2) if backs else None,
            "peak_connects_per_100ms": max(buckets.values()) if buckets else 0,
            "broker_connections_total": attempts, "messages": expected, "lost": lost}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--per-proc", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between two detections")
    parser.add_argument("--jitter", type=float, nargs="+", default=[0.5, 0.0])
    parser.add_argument("--warmup", type=float, default=4.0)
    parser.add_argument("--down", type=float, default=3.0)
    parser.add_argument("--after", type=float, default=20.0)
    args = parser.parse_args()
    if args.worker:
        args.jitter = args.jitter[0]
        return worker(args)
    for jitter in args.jitter:
        print(json.dumps(run(jitter, args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
