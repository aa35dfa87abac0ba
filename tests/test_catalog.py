"""`edgedet models` against a real HTTP server on loopback (http.server in a thread, with Range support)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgedet.catalog import PACKAGED_CATALOG, catalog_path, load_catalog, models_main
from tests.conftest import REPO

MODEL_BYTES = bytes(range(256)) * 400  # 100 kB, so a partial download is a real fraction of it
LABELS_BYTES = b"background\ntench\ngoldfish\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tgz_with(member: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("model_info.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    return buffer.getvalue()


class Server:
    """Serves a dict of path -> bytes; honours 'Range: bytes=N-' unless ignore_range; records requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                range_header = self.headers.get("Range")
                owner.requests.append((self.path, range_header))
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if range_header and not owner.ignore_range:
                    start = int(range_header.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    srv.files["/m.tflite"] = MODEL_BYTES
    srv.files["/labels.txt"] = LABELS_BYTES
    srv.files["/m.tgz"] = tgz_with("m_quant.tflite", MODEL_BYTES)
    yield srv
    srv.close()


def write_catalog(tmp_path: Path, base: str, **overrides: object) -> Path:
    entry = {"name": "tiny", "url": f"{base}/m.tflite", "file": "tiny.tflite", "sha256": sha(MODEL_BYTES),
             "archive_member": None, "input_size": 128, "quantized": True, "edgetpu": False,
             "labels": {"file": "labels.txt", "url": f"{base}/labels.txt", "sha256": sha(LABELS_BYTES)}}
    entry.update(overrides)
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"models": [entry]}))
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = models_main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_file(tmp_path: Path, server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = write_catalog(tmp_path, server.base)
    dest = tmp_path / "out"
    code, out, err = run(["--catalog", str(catalog), "pull", "tiny", "--dir", str(dest)], capsys)
    assert (code, err) == (0, "")
    assert (dest / "tiny.tflite").read_bytes() == MODEL_BYTES
    assert (dest / "labels.txt").read_bytes() == LABELS_BYTES
    assert leftovers(dest) == ["labels.txt", "tiny.tflite"]
    assert f"verified; sha256 {sha(MODEL_BYTES)}" in out
    # A second pull finds the verified file and does not download again.
    server.requests.clear()
    code, out, _ = run(["--catalog", str(catalog), "pull", "tiny", "--dir", str(dest)], capsys)
    assert code == 0 and server.requests == [] and "already present" in out


def test_resumed_partial(tmp_path: Path, server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = write_catalog(tmp_path, server.base)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "tiny.tflite.partial").write_bytes(MODEL_BYTES[:40_000])
    code, _, err = run(["--catalog", str(catalog), "pull", "tiny", "--dir", str(dest)], capsys)
    assert (code, err) == (0, "")
    assert ("/m.tflite", "bytes=40000-") in server.requests
    assert (dest / "tiny.tflite").read_bytes() == MODEL_BYTES
    assert "tiny.tflite.partial" not in leftovers(dest)


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path, server: Server,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    server.ignore_range = True
    catalog = write_catalog(tmp_path, server.base)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "tiny.tflite.partial").write_bytes(MODEL_BYTES[:40_000])
    code, _, _ = run(["--catalog", str(catalog), "pull", "tiny", "--dir", str(dest)], capsys)
    assert code == 0
    assert (dest / "tiny.tflite").read_bytes() == MODEL_BYTES  # not the first 40 kB twice


def test_corrupted_file(tmp_path: Path, server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    server.files["/m.tflite"] = MODEL_BYTES[:-1] + b"\x00"
    catalog = write_catalog(tmp_path, server.base)
    dest = tmp_path / "out"
    code, _, err = run(["--catalog", str(catalog), "pull", "tiny", "--dir", str(dest)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "sha256 mismatch" in err and sha(MODEL_BYTES) in err
    assert leftovers(dest) == []


def test_404(tmp_path: Path, server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    catalog = write_catalog(tmp_path, server.base, url=f"{server.base}/gone.tflite")
    dest = tmp_path / "out"
    code, _, err = run(["--catalog", str(catalog), "pull", "tiny", "--dir", str(dest)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "HTTP 404" in err and "/gone.tflite" in err
    assert leftovers(dest) == []


def test_refused_connection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    catalog = write_catalog(tmp_path, f"http://127.0.0.1:{port}")
    code, _, err = run(["--catalog", str(catalog), "pull", "tiny", "--dir", str(tmp_path / "out")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "cannot connect" in err and "refused" in err.lower()


def test_archive_member_unverified_reports_digest(tmp_path: Path, server: Server,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    catalog = write_catalog(tmp_path, server.base, url=f"{server.base}/m.tgz",
                            archive_member="m_quant.tflite", sha256=None)
    dest = tmp_path / "out"
    code, out, _ = run(["--catalog", str(catalog), "pull", "tiny", "--dir", str(dest)], capsys)
    assert code == 0
    assert (dest / "tiny.tflite").read_bytes() == MODEL_BYTES
    assert f"UNVERIFIED (no known sha256); sha256 {sha(MODEL_BYTES)}" in out
    assert leftovers(dest) == ["labels.txt", "tiny.tflite"]


def test_unknown_name_and_missing_catalog(tmp_path: Path, server: Server,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    catalog = write_catalog(tmp_path, server.base)
    code, _, err = run(["--catalog", str(catalog), "info", "tin"], capsys)
    assert code == 2 and "no model named 'tin'" in err and "did you mean tiny" in err
    code, _, err = run(["--catalog", str(tmp_path / "none.json"), "list"], capsys)
    assert code == 2 and "none.json" in err and err.count("\n") == 1


def test_bundled_catalog_covers_the_issue(capsys: pytest.CaptureFixture[str]) -> None:
    catalog = load_catalog()
    for width in ("0.25", "0.5", "0.75", "1.0"):
        for size in (128, 160, 192, 224):
            for suffix in ("", "_quant"):
                entry = catalog[f"mobilenet_v1_{width}_{size}{suffix}"]
                assert entry.input_size == size and entry.quantized == bool(suffix)
    for name in ("mobilenet_v2_1.0_224", "mobilenet_v2_1.4_224", "mobilenet_v2_1.0_224_quant",
                 "mobilenet_v1_0.25_128_quant_edgetpu", "mobilenet_v2_1.0_224_quant_edgetpu"):
        assert name in catalog
    assert all(e.edgetpu == e.name.endswith("_edgetpu") for e in catalog.values())
    code, out, _ = run(["list"], capsys)
    assert code == 0 and len(out.splitlines()) == len(catalog)


def test_one_manifest_for_checkout_and_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The design's models/catalog.json is a relative symlink to the package data a wheel ships."""
    monkeypatch.delenv("EDGEDET_CATALOG", raising=False)
    assert catalog_path() == PACKAGED_CATALOG and PACKAGED_CATALOG.parent.name == "data"
    checkout_copy = REPO / "models" / "catalog.json"
    assert checkout_copy.is_symlink() and not Path(os.readlink(checkout_copy)).is_absolute()
    assert checkout_copy.resolve() == PACKAGED_CATALOG.resolve()


def test_bundled_digests_match_shared_models(shared_models: Path) -> None:
    catalog = load_catalog()
    known = {e.file: e.sha256 for e in catalog.values() if e.sha256}
    assert len(known) == 3
    for file, digest in known.items():
        assert sha((shared_models / file).read_bytes()) == digest
