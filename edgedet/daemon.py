"""``edgedet run``: build the pipeline from the config and run it as a service.

systemd integration: READY=1 once the model is loaded and the first frame is processed, WATCHDOG=1 only
while frames are processed, STATUS= with fps and latency, STOPPING=1 on shutdown. SIGTERM/SIGINT stop
capture and exit 0; SIGHUP reloads the config and, when it is valid, replaces the pipeline in-process.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgedet import __version__
from edgedet.config import EdgedetConfig
from edgedet.errors import EdgedetError
from edgedet.pipeline import Pipeline
from edgedet.results import FrameResult
from edgedet.service import Notifier, ServiceSignals, Watchdog, try_reload

log = logging.getLogger(__name__)
STOP_FLUSH_S = 0.8


@dataclass
class RunOptions:
    config_path: Optional[Path]
    overrides: list[str]
    max_frames: Optional[int] = None
    duration_s: Optional[float] = None
    stats_file: Optional[Path] = None


def freeze_heap() -> None:
    """Move everything allocated at start-up (runtime, numpy, the config, the model) out of the GC's reach: with
    the broker down, the outbox's churn triggers full collections, and each one would walk the whole start-up
    heap (see README, performance)."""
    gc.unfreeze()  # a reload: let the old parts be collected
    gc.collect()
    gc.freeze()


def run_daemon(config: EdgedetConfig, options: RunOptions) -> int:
    """Run until SIGTERM/SIGINT or a bound; returns the process exit code."""
    notifier = Notifier()
    watchdog = Watchdog.from_environment(notifier)
    run_id = uuid.uuid4().hex[:12]
    ready = threading.Event()
    with ServiceSignals() as signals:
        pipeline = Pipeline.build(config, run_id, stop=signals.stop)
        freeze_heap()
        classifier = pipeline.classifier
        log.info("edgedet %s (run %s): model %s (%s %s, %d threads, delegate %s), source %s", __version__,
                 run_id, classifier.name, classifier.runtime.name, classifier.runtime.version, classifier.num_threads,
                 classifier.delegate_info["active"], pipeline.source.describe().get("type"))
        for lane in pipeline.lanes if config.models is not None else []:
            log.info("classifier %s: model %s, delegate %s, region %s, every %d frame(s)%s", lane.name,
                     lane.classifier.name, lane.classifier.delegate_info["active"],
                     list(lane.classifier.preprocessor.roi or (0, 0, 1, 1)), lane.every_n_frames,
                     f", at most every {lane.interval_s:g} s" if lane.interval_s else "")

        def on_frame(result: FrameResult) -> None:
            if not ready.is_set():
                ready.set()
                notifier.ready(status=f"model {pipeline.classifier.name} loaded, first frame processed")
            watchdog.frame_processed(latency_ms=result.latency_ms.get("total"))

        def between_frames() -> None:
            if not signals.take_reload():
                return
            notifier.reloading()
            new = try_reload(options.config_path, options.overrides)
            if new is not None:
                try:
                    rebuilt = pipeline.reload(new)
                except EdgedetError as exc:
                    log.error("reload failed, keeping the running config: %s", exc)
                else:
                    log.info("config reloaded: %s", ", ".join(rebuilt) + " rebuilt" if rebuilt else "unchanged")
                    if rebuilt:
                        freeze_heap()
            notifier.ready()

        cfg = config
        max_frames = options.max_frames if options.max_frames is not None else cfg.loop.max_frames
        duration = options.duration_s if options.duration_s is not None else cfg.loop.duration_s
        try:
            pipeline.run(max_frames=max_frames, duration_s=duration, on_frame=on_frame,
                         between_frames=between_frames, between_frames_due=signals.reload.is_set)
        finally:
            notifier.stopping()
            # SIGTERM must exit within 2 s: flush what can still be published for at most STOP_FLUSH_S.
            pipeline.close(flush_timeout_s=min(STOP_FLUSH_S, pipeline.config.mqtt.flush_timeout_s))
        final_stats = pipeline.final_stats()
    if options.stats_file is not None:
        options.stats_file.parent.mkdir(parents=True, exist_ok=True)
        options.stats_file.write_text(json.dumps(final_stats, indent=1))
    log.info("stopped: %d frames processed, %d dropped, %.1f fps out", final_stats.get("frames_processed", 0),
             final_stats.get("frames_dropped", 0), final_stats.get("fps_out", 0.0))
    return 0
