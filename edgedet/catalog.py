"""The model catalogue: ``edgedet models list | info NAME | pull NAME [--dir D]`` (and ``info FILE``).

The manifest lists public MobileNet TFLite files with their URL, sha256 where known,
input size, normalization and labels. ``pull`` downloads with the standard library (urllib), resumes a
``.partial`` file with an HTTP Range request, verifies sha256 and renames atomically, so a file with the final
name is always complete and verified. An entry whose digest is not known is kept but reported as unverified,
with the digest it got, so the user can pin it.

The manifest lives in the package (``edgedet/data/catalog.json``, shipped in the wheel as package data);
``models/catalog.json`` in a checkout is a relative symlink to it, so there is one file to edit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

from edgedet.errors import EdgedetError

CATALOG_ENV = "EDGEDET_CATALOG"
PACKAGED_CATALOG = Path(__file__).resolve().parent / "data" / "catalog.json"
CHUNK_BYTES = 64 * 1024
TIMEOUT_S = 30.0


class CatalogError(EdgedetError):
    """The manifest is unreadable, a name is unknown, or a download failed."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    url: str
    file: str
    sha256: str | None
    archive_member: str | None
    input_size: int
    quantized: bool
    edgetpu: bool
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, entry: dict[str, Any], where: Path) -> CatalogEntry:
        try:
            return cls(name=entry["name"], url=entry["url"], file=entry["file"], sha256=entry.get("sha256"),
                       archive_member=entry.get("archive_member"), input_size=int(entry["input_size"]),
                       quantized=bool(entry["quantized"]), edgetpu=bool(entry.get("edgetpu", False)),
                       raw=entry)
        except (KeyError, TypeError, ValueError) as err:
            raise CatalogError(f"entry {entry.get('name', '?')!r} lacks a valid field {err}", where=where,
                               fix="each entry needs name, url, file, input_size, quantized") from None


def catalog_path(path: str | Path | None = None) -> Path:
    """The manifest: an explicit path, then $EDGEDET_CATALOG, then the package's."""
    if path is not None:
        return Path(path)
    if os.environ.get(CATALOG_ENV):
        return Path(os.environ[CATALOG_ENV])
    return PACKAGED_CATALOG


def load_catalog(path: str | Path | None = None) -> dict[str, CatalogEntry]:
    where = catalog_path(path)
    try:
        document = json.loads(where.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError("model catalogue not found", where=where,
                           fix=f"pass --catalog FILE or set {CATALOG_ENV}") from None
    except (OSError, ValueError) as err:
        raise CatalogError(f"cannot read the model catalogue ({err})", where=where) from None
    entries = [CatalogEntry.from_dict(e, where) for e in document.get("models", [])]
    return {entry.name: entry for entry in entries}


def find_entry(catalog: dict[str, CatalogEntry], name: str) -> CatalogEntry:
    # Accept the file name too (mobilenet_v1_0.25_128_quant.tflite), since that is what users see on disk.
    key = name[: -len(".tflite")] if name.endswith(".tflite") else name
    if key in catalog:
        return catalog[key]
    close = [n for n in catalog if key.lower() in n.lower()][:5]
    hint = f"did you mean {', '.join(close)}?" if close else "see 'edgedet models list'"
    raise CatalogError(f"no model named {name!r} in the catalogue", fix=hint)


# ---------------------------------------------------------------------------------------------- download


def _progress_bar(total: int | None, initial: int, label: str) -> Any:
    """A tqdm bar on stderr when it is a terminal and tqdm is installed (the 'bench' extra); else None."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=label, file=sys.stderr)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, partial: Path, *, label: str = "", timeout: float = TIMEOUT_S) -> None:
    """Fetch url into ``partial``, resuming from its current length with a Range request when it exists."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "edgedet-models"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            return  # the partial file already holds every byte; the digest check decides if it is right
        raise CatalogError(f"HTTP {err.code} {err.reason} from {url}",
                           fix="check the URL in the catalogue or try again later") from None
    except urllib.error.URLError as err:
        reason = getattr(err.reason, "strerror", None) or str(err.reason)
        raise CatalogError(f"cannot connect for {url} ({reason})",
                           fix="check the network connection or proxy") from None
    except OSError as err:  # timeouts and resets before the headers
        raise CatalogError(f"download of {url} failed ({err})", fix="try again; it resumes") from None
    with response:
        resumed = response.status == 206
        if have and not resumed:
            have = 0  # the server ignored Range: start over rather than append a second copy
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        bar = _progress_bar(total, have, label or partial.name)
        try:
            with partial.open("ab" if resumed else "wb") as out:
                _copy(response, out, bar.update if bar else None)
        except OSError as err:
            raise CatalogError(f"download of {url} broke off ({err})",
                               fix=f"run the same command again; it resumes from {partial}") from None
        finally:
            if bar:
                bar.close()
    if total is not None and partial.stat().st_size < total:
        raise CatalogError(f"download of {url} ended early ({partial.stat().st_size} of {total} bytes)",
                           fix=f"run the same command again; it resumes from {partial}")


def _copy(source: BinaryIO, target: BinaryIO, on_bytes: Callable[[int], Any] | None) -> None:
    while chunk := source.read(CHUNK_BYTES):
        target.write(chunk)
        if on_bytes:
            on_bytes(len(chunk))


def _extract_member(archive: Path, member: str, target: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            matches = [m for m in tar.getmembers() if m.isfile() and Path(m.name).name == member]
            if not matches:
                raise CatalogError(f"{member} is not in the downloaded archive", where=archive,
                                   fix="the catalogue's archive_member is wrong; report it")
            source = tar.extractfile(matches[0])
            assert source is not None  # a regular file always has a stream
            with source, target.open("wb") as out:
                shutil.copyfileobj(source, out)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise CatalogError(f"damaged archive ({err})", where=archive,
                           fix="delete it and pull again") from None


@dataclass
class PullResult:
    path: Path
    sha256: str
    verified: bool
    already_present: bool = False


def fetch_verified(url: str, target: Path, sha256: str | None, *, archive_member: str | None = None,
                   label: str = "") -> PullResult:
    """Download url to target (via target.partial), check sha256, rename atomically.

    On a digest mismatch nothing is left behind (neither the partial nor the target), since resuming a corrupt
    file can never succeed.
    """
    if target.is_file() and sha256 and _sha256_of(target) == sha256:
        return PullResult(target, sha256, verified=True, already_present=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + (".tgz" if archive_member else "") + ".partial")
    download(url, partial, label=label or target.name)
    staged = partial
    if archive_member:
        staged = target.with_name(target.name + ".extracted.partial")
        try:
            _extract_member(partial, archive_member, staged)
        except CatalogError:
            partial.unlink(missing_ok=True)
            staged.unlink(missing_ok=True)
            raise
    got = _sha256_of(staged)
    if sha256 and got != sha256.lower():
        staged.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
        raise CatalogError(f"sha256 mismatch for {url}: expected {sha256}, got {got}; download deleted",
                           fix="try again; if it persists the file at that URL changed")
    os.replace(staged, target)  # atomic within a directory: the final name only ever holds a checked file
    partial.unlink(missing_ok=True)
    return PullResult(target, got, verified=bool(sha256))


def pull(entry: CatalogEntry, directory: Path) -> list[PullResult]:
    """Download a model (and its labels file when missing) into directory."""
    results = [fetch_verified(entry.url, directory / entry.file, entry.sha256,
                              archive_member=entry.archive_member, label=entry.name)]
    labels = entry.raw.get("labels") or {}
    if labels.get("url") and labels.get("file"):
        results.append(fetch_verified(labels["url"], directory / labels["file"], labels.get("sha256")))
    return results


# --------------------------------------------------------------------------------------------------- CLI


def _describe(entry: CatalogEntry) -> str:
    kind = "edgetpu" if entry.edgetpu else ("uint8" if entry.quantized else "float32")
    digest = "sha256 known" if entry.sha256 else "unverified"
    return f"{entry.name:<38} {entry.input_size:>3}px {kind:<8} {digest}"


def _looks_like_a_file(model: str) -> bool:
    return Path(model).exists() or model.endswith(".tflite")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``edgedet models``' arguments, in the one parser tree of edgedet/cli.py."""
    parser.description = "Inspect model files; list, describe and pull public MobileNet TFLite models."
    parser.add_argument("--catalog", type=Path,
                        help=f"manifest to use (default: ${CATALOG_ENV}, else the bundled one)")
    commands = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    commands.add_parser("list", help="the catalogue of public MobileNet TFLite files").set_defaults(
        handler=cmd_list)
    info = commands.add_parser("info", help="a model FILE: input, output, ops, Edge TPU compilation, size, "
                               "sha256; or a catalogue NAME")
    info.add_argument("model", metavar="MODEL", help="a .tflite file, or a catalogue name")
    info.add_argument("--json", action="store_true", help="a FILE's details as JSON (a NAME's always are)")
    info.set_defaults(handler=cmd_info)
    pull_cmd = commands.add_parser("pull", help="download, verify and store a catalogue model and its labels")
    pull_cmd.add_argument("name")
    pull_cmd.add_argument("--dir", type=Path, default=Path("models"), help="target folder (default: models)")
    pull_cmd.set_defaults(handler=cmd_pull)
    from edgedet import install

    install.add_arguments(commands.add_parser(
        "install", help="check a model, copy it into the models folder, point the config at it and reload the "
        "running daemon"))


def cmd_list(args: argparse.Namespace) -> int:
    for entry in load_catalog(args.catalog).values():
        print(_describe(entry))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    if _looks_like_a_file(args.model):
        from edgedet.modelinfo import show_model_file

        return show_model_file(args.model, args.json)
    print(json.dumps(find_entry(load_catalog(args.catalog), args.model).raw, indent=2))
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    entry = find_entry(load_catalog(args.catalog), args.name)
    for result in pull(entry, args.dir):
        state = "already present, verified" if result.already_present else (
            "verified" if result.verified else "UNVERIFIED (no known sha256)")
        print(f"{result.path}: {state}; sha256 {result.sha256}")
    return 0


def models_main(argv: list[str] | None = None) -> int:
    """``edgedet models ARGV`` in-process, through the same parser tree and error lines as the command."""
    from edgedet.cli import run_command

    return run_command(["models", *(sys.argv[1:] if argv is None else argv)], configure_logging=False)
