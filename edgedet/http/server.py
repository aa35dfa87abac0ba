"""The HTTP endpoint as a ``Sink``: the frame loop hands it references, its own threads do the work on request.

``handle`` (inference thread, every frame) keeps a reference to the newest result and frame and queues the
result: no copy, no encoding, no lock, no arithmetic. The HTTP server's thread folds the queue into the
Prometheus histogram and the page's per-second latency history in batches (every ``poll_interval``, and
before every scrape or page), so every frame is counted, off the frame loop's thread. Every source hands out
a new (or read-only) array per frame, so the reference stays valid after ``handle`` returns and only the
newest frame is kept alive. JPEG/PNG encoding, preprocessing for the model's-eye view and page rendering run
on the HTTP server's threads when asked, cached per frame and at most ``MAX_ENCODES_PER_S`` times a second
per image and for the page, however often clients poll (a faster request waits for its turn); the encoders
release the GIL while they compress.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import socket
import sys
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any, Optional, Protocol
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from edgedet.errors import ConfigError
from edgedet.frames.base import FrameSource
from edgedet.http.config import HttpConfig
from edgedet.http.metrics import PipelineCollector, StageHistogram
from edgedet.http.page import RoiRect, render_page
from edgedet.lanes import Lane
from edgedet.model.classifier import Classifier
from edgedet.model.preprocess import roi_box, to_rgb
from edgedet.results import FrameResult, LoopStats

log = logging.getLogger("edgedet.http")

MAX_ENCODES_PER_S = 5.0
HISTORY_S = 300  # the page's latency chart: the last five minutes, one point a second
CHART_STAGES = ("preprocess", "inference", "postprocess", "total")
INPUT_VIEW_PX = 288  # the model's input is scaled up (nearest) to about this width
PINNED_FRAMES = 4
POLL_S = 0.25  # the server thread folds the queued latencies at least this often
# Folded by the frame loop itself only past this many (the HTTP thread starved for seconds), so memory stays
# bounded and every frame is still counted.
FOLD_AT = 8192


class PipelineView(Protocol):
    """What the endpoint reads from the running pipeline (edgedet.pipeline.Pipeline)."""

    config: Any
    source: FrameSource

    @property
    def classifier(self) -> Classifier: ...

    @property
    def lanes(self) -> Sequence[Lane]: ...

    def loop_stats(self) -> LoopStats: ...

    def mqtt_counters(self) -> dict[str, Any]: ...

    def stats_message(self) -> dict[str, Any]: ...

    def info_message(self) -> dict[str, Any]: ...


_latency, _wall = attrgetter("latency_ms"), attrgetter("captured_wall")


class LatencyHistory:
    """Per-second means of the chart's stages over the last ``seconds``; fed by the frame loop."""

    def __init__(self, seconds: int = HISTORY_S) -> None:
        self._points: deque[tuple[int, tuple[float, ...]]] = deque(maxlen=seconds)
        self._lock = threading.Lock()
        self._second = -1
        self._sums = [0.0] * len(CHART_STAGES)
        self._count = 0

    def _enter(self, second: int) -> None:
        if second != self._second:
            if self._count:
                mean = tuple(s / self._count for s in self._sums)
                with self._lock:  # once a second
                    self._points.append((self._second, mean))
            self._second, self._sums, self._count = second, [0.0] * len(CHART_STAGES), 0

    def add(self, wall: float, latency_ms: dict[str, float]) -> None:
        self._enter(int(wall))
        sums = self._sums
        for i, stage in enumerate(CHART_STAGES):
            sums[i] += latency_ms.get(stage, 0.0)
        self._count += 1

    _row = staticmethod(itemgetter(*CHART_STAGES))

    def add_many(self, results: Sequence[FrameResult]) -> None:
        """``add`` of each result in order, one numpy sum per second of frames instead of a loop per frame."""
        if not results:
            return
        width = len(CHART_STAGES)
        try:
            values = np.fromiter(chain.from_iterable(map(self._row, map(_latency, results))), np.float64,
                                 len(results) * width)
        except KeyError:  # a stage missing: counted as 0, as add does
            for result in results:
                self.add(result.captured_wall, result.latency_ms)
            return
        seconds = np.fromiter(map(_wall, results), np.float64, len(results)).astype(np.int64)  # = int()
        starts = np.concatenate(([0], np.flatnonzero(np.diff(seconds)) + 1))
        sums = np.add.reduceat(values.reshape(len(results), width), starts, axis=0)
        counts = np.diff(np.append(starts, len(results)))
        for second, run_sums, count in zip(seconds[starts].tolist(), sums.tolist(), counts.tolist()):
            self._enter(second)
            self._sums = [a + b for a, b in zip(self._sums, run_sums)]
            self._count += count

    def points(self) -> list[tuple[int, tuple[float, ...]]]:
        with self._lock:
            return list(self._points)


@dataclass(frozen=True)
class Encoded:
    frame_id: int
    data: bytes
    made_mono: float
    size: tuple[int, int]


def encode_jpeg(frame: Any, quality: int = 80) -> tuple[bytes, tuple[int, int]]:
    rgb = to_rgb(frame)
    height, width = rgb.shape[:2]
    # OpenCV when this process has already loaded it (its resize, its camera source): a quarter less CPU than
    # Pillow for the same libjpeg output. Never imported here: an import holds the GIL for a good 0.1 s.
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and hasattr(cv2, "imencode"):
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            return data.tobytes(), (width, height)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), (width, height)


def input_image(tensor: np.ndarray, gain: np.ndarray, offset: np.ndarray, raw: bool) -> np.ndarray:
    """The model's input tensor (1xHxWx3) back to 0..255 RGB: the quantization undone, nothing else."""
    values = tensor[0]
    if raw:
        return np.asarray(values, dtype=np.uint8)
    pixels = (values.astype(np.float32) - offset) / gain
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def encode_input_png(classifier: Classifier, preprocessor: Any, frame: Any) -> tuple[bytes, tuple[int, int]]:
    quant = classifier.quantization
    rgb = input_image(preprocessor(frame), quant.gain, quant.offset, quant.raw)
    height, width = rgb.shape[:2]
    factor = max(1, round(INPUT_VIEW_PX / max(1, width)))
    image = Image.fromarray(rgb).resize((width * factor, height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    # zlib level 1 with run-length matching: half the CPU of the default level 6, and smaller for an image
    # scaled up by repeating pixels.
    image.save(buffer, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buffer.getvalue(), (width, height)


def roi_rects(lanes: Sequence[Lane], frame_size: tuple[int, int]) -> list[RoiRect]:
    """Each classifier's region of interest as the pixel box its preprocessor cuts (``roi_box``), given as
    fractions of the frame for the page; classifiers without one are left out."""
    width, height = frame_size
    rects = []
    for lane in lanes:
        roi = lane.classifier.preprocessor.roi
        if roi is not None:
            x0, y0, x1, y1 = roi_box(width, height, roi)
            rects.append(RoiRect(lane.name, x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height))
    return rects


class HttpSink:
    """The endpoint (see the module docstring). ``start`` serves from a thread; ``close`` stops it."""

    def __init__(self, cfg: HttpConfig, view: PipelineView) -> None:
        self.cfg, self.view = cfg, view
        self.histogram = StageHistogram()
        self.history = LatencyHistory()
        self._latest: Optional[tuple[FrameResult, Any]] = None
        self._queue: deque[FrameResult] = deque()
        self._fold_lock = threading.Lock()
        self._pinned: OrderedDict[int, tuple[FrameResult, Any]] = OrderedDict()
        self._pin_lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._jpegs: OrderedDict[int, Encoded] = OrderedDict()
        self._page_lock = threading.Lock()
        self._page: Optional[tuple[str, float, bytes]] = None  # token query, made at, the page (see page())
        self.clock, self.sleep = time.monotonic, time.sleep  # injected by tests
        self._pngs: OrderedDict[int, Encoded] = OrderedDict()
        self._preprocessor: Optional[tuple[Classifier, Any]] = None
        self._info: Optional[tuple[tuple[Any, Any, Any], dict[str, Any]]] = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PipelineCollector(view.loop_stats, view.mqtt_counters, self.info, self.histogram,
                                                 before=self.fold))
        ProcessCollector(registry=self.registry)
        self._server = _make_server(cfg, self)
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": POLL_S},
                                        name="edgedet-http", daemon=True)
        self._thread.start()
        log.info("HTTP endpoint on http://%s:%d/ (metrics: /metrics)", self.cfg.bind, self.port)

    # -- Sink protocol (inference thread) -------------------------------------------------------------
    def handle(self, result: FrameResult, frame: Any = None) -> None:
        self._latest = (result, frame)
        queue = self._queue
        queue.append(result)
        if len(queue) > FOLD_AT:
            self.fold()

    def on_stats(self, stats: LoopStats) -> None:
        pass  # /metrics and /api/stats read the loop's statistics when asked

    def counters(self) -> dict[str, Any]:
        return {}

    def close(self, flush_timeout_s: Optional[float] = None) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(2.0)
        self._server.server_close()

    # -- what the HTTP threads ask for ----------------------------------------------------------------
    def fold(self) -> None:
        """The queued results into the histogram and the history. Only the frame loop appends to the queue and
        only this pops, under the lock, so the ``len`` items taken are there."""
        with self._fold_lock:
            queue = self._queue
            batch = [queue.popleft() for _ in range(len(queue))]
            if batch:
                self.histogram.observe_many([result.latency_ms for result in batch])
                self.history.add_many(batch)

    def info(self) -> dict[str, Any]:
        """The info message, computed again only when a reload swapped the model or the source (the model's
        sha256 is hashed from its bytes)."""
        # The objects themselves (compared with ``is``): a reload assigns a new config, and an id() of a
        # freed classifier could be reused by its replacement.
        key = (self.view.config, self.view.source, self.view.classifier)
        cached = self._info
        if cached is None or any(a is not b for a, b in zip(cached[0], key)):
            cached = (key, self.view.info_message())
            self._info = cached
        return cached[1]

    def pin_latest(self) -> Optional[tuple[FrameResult, Any]]:
        """The newest frame, kept for the page's image requests so the images match the scores shown."""
        latest = self._latest
        if latest is None:
            return None
        with self._pin_lock:
            self._pinned[latest[0].frame_id] = latest
            self._pinned.move_to_end(latest[0].frame_id)
            while len(self._pinned) > PINNED_FRAMES:
                self._pinned.popitem(last=False)
        return latest

    def _frame(self, frame_id: Optional[int]) -> Optional[tuple[FrameResult, Any]]:
        if frame_id is not None:
            with self._pin_lock:
                pinned = self._pinned.get(frame_id)
            if pinned is not None:
                return pinned
        return self._latest

    def _pace(self, last_made: Optional[float]) -> None:
        """Hold a request that comes within 1 / MAX_ENCODES_PER_S of the last image or page made until that
        time has passed: a client that polls back to back is slowed to the limit, so its requests, not only
        its encodings, stay a few a second (this thread sleeps, the frame loop runs)."""
        if last_made is not None:
            wait = last_made + 1.0 / MAX_ENCODES_PER_S - self.clock()
            if wait > 0:
                self.sleep(wait)

    def _encoded(self, cache: OrderedDict[int, Encoded], frame_id: Optional[int], encode: Any) -> Optional[Encoded]:
        wanted = self._frame(frame_id)
        if wanted is None or wanted[1] is None:
            return None
        if wanted[0].frame_id not in cache:
            newest = next(reversed(cache.values()), None)
            self._pace(newest.made_mono if newest is not None else None)
            wanted = self._frame(frame_id) or wanted  # without a frame id: the newest after the wait
        result, frame = wanted
        with self._encode_lock:
            hit = cache.get(result.frame_id)
            if hit is not None:
                return hit
            now = self.clock()
            newest = next(reversed(cache.values()), None)
            if newest is not None and now - newest.made_mono < 1.0 / MAX_ENCODES_PER_S:
                return newest  # polled faster than the limit: the last image again
            data, size = encode(frame)
            made = Encoded(result.frame_id, data, now, size)
            cache[result.frame_id] = made
            while len(cache) > PINNED_FRAMES:
                cache.popitem(last=False)
            return made

    def frame_jpeg(self, frame_id: Optional[int] = None) -> Optional[Encoded]:
        return self._encoded(self._jpegs, frame_id, encode_jpeg)

    def input_png(self, frame_id: Optional[int] = None) -> Optional[Encoded]:
        classifier = self.view.classifier
        cached = self._preprocessor
        if cached is None or cached[0] is not classifier:
            # A preprocessor with buffers of its own (this runs beside the frame loop's) and the same settings,
            # so the same input (ROI, crop, resize, quantization) as the model's.
            cached = (classifier, classifier.preprocessor.copy())
            self._preprocessor = cached
        preprocessor = cached[1]
        return self._encoded(self._pngs, frame_id, lambda frame: encode_input_png(classifier, preprocessor, frame))

    def page(self, token_query: str) -> bytes:
        """The page, rendered at most ``MAX_ENCODES_PER_S`` times a second: a request sooner than that after
        the last one waits for its turn (``_pace``), as the images' do."""
        last = self._page
        self._pace(last[1] if last is not None else None)
        with self._page_lock:
            now = self.clock()
            last = self._page
            if last is not None and last[0] == token_query and now - last[1] < 1.0 / MAX_ENCODES_PER_S:
                return last[2]  # another request rendered it while this one waited
            page = self._render_page(token_query)
            self._page = (token_query, now, page)
            return page

    def _render_page(self, token_query: str) -> bytes:
        self.fold()
        latest = self.pin_latest()
        view = self.view
        rois: list[RoiRect] = []
        if latest is not None and latest[1] is not None:
            height, width = np.shape(latest[1])[:2]
            rois = roi_rects(view.lanes, (int(width), int(height)))
        return render_page(info=self.info(), stats=view.loop_stats(), latest=latest[0] if latest else None,
                           frame_size=tuple(np.shape(latest[1])[1::-1]) if latest and latest[1] is not None
                           else None, rois=rois, history=self.history.points(), stages=CHART_STAGES,
                           token_query=token_query).encode("utf-8")


def _make_server(cfg: HttpConfig, sink: HttpSink) -> ThreadingHTTPServer:
    family = socket.AF_INET6 if ":" in cfg.bind else socket.AF_INET

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True
        allow_reuse_address = True

        def service_actions(self) -> None:  # serve_forever's loop, at least every poll_interval
            try:
                sink.fold()
            except Exception as exc:  # keep serving; the next fold retries what is still queued
                log.error("HTTP: counting latencies failed: %s", exc)

    handler = type("Handler", (_Handler,), {"sink": sink, "token": cfg.token})
    try:
        return Server((cfg.bind.strip("[]"), cfg.port), handler)
    except OSError as exc:
        raise ConfigError(f"http: cannot listen on {cfg.bind}:{cfg.port} ({exc.strerror or exc})",
                          fix="choose another http.port or http.bind, or stop what holds it") from None


class _Handler(BaseHTTPRequestHandler):
    sink: HttpSink
    token: Optional[str]
    server_version = "edgedet"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # Nothing here changes state: only GET and HEAD.
    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET and HEAD\n", "text/plain", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def do_HEAD(self) -> None:
        self._dispatch(body=False)

    def do_GET(self) -> None:
        self._dispatch(body=True)

    def _authorized(self, query: dict[str, list[str]]) -> tuple[bool, str]:
        if not self.token:
            return True, ""
        expected = self.token.encode()
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip().encode(), expected):
            return True, ""
        given = query.get("token", [""])[0]
        if given and hmac.compare_digest(given.encode(), expected):
            return True, given
        return False, ""

    def _dispatch(self, *, body: bool) -> None:
        self._body = body
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        ok, query_token = self._authorized(query)
        if not ok:
            self._send(HTTPStatus.UNAUTHORIZED, b"token required (Authorization: Bearer, or ?token=)\n",
                       "text/plain", {"WWW-Authenticate": 'Bearer realm="edgedet"'})
            return
        frame_id: Optional[int] = None
        if query.get("frame", [""])[0].isdigit():
            frame_id = int(query["frame"][0])
        sink = self.sink
        try:
            if url.path == "/":
                self._send(HTTPStatus.OK, sink.page(f"token={query_token}" if query_token else ""),
                           "text/html; charset=utf-8")
            elif url.path == "/metrics":
                # Every name here is a legacy (ASCII) one, so the text is that of format 0.0.4, which every
                # Prometheus since 2.0 asks for and parses.
                self._send(HTTPStatus.OK, generate_latest(sink.registry), CONTENT_TYPE_PLAIN_0_0_4)
            elif url.path == "/api/stats":
                self._json(sink.view.stats_message())
            elif url.path == "/api/info":
                self._json(sink.info())
            elif url.path in ("/frame.jpg", "/input.png"):
                image = sink.frame_jpeg(frame_id) if url.path == "/frame.jpg" else sink.input_png(frame_id)
                if image is None:
                    self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"no frame yet\n", "text/plain")
                else:
                    kind = "image/jpeg" if url.path == "/frame.jpg" else "image/png"
                    self._send(HTTPStatus.OK, image.data, kind, {"X-Frame-Id": str(image.frame_id)})
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:
            log.error("HTTP %s failed: %s", url.path, exc)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}\n".encode(), "text/plain")

    def _json(self, payload: dict[str, Any]) -> None:
        self._send(HTTPStatus.OK, json.dumps(payload, separators=(",", ":")).encode(), "application/json")

    def _send(self, status: HTTPStatus, data: bytes, kind: str, headers: Optional[dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if getattr(self, "_body", True) and self.command != "HEAD":
            self.wfile.write(data)
