"""The images source: directory or glob, fps, loop, non-images skipped with one warning each."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from helpers import read_all
from PIL import Image

from edgedet.errors import EXIT_USAGE, SourceError
from edgedet.frames import open_source
from edgedet.frames.config import SourceConfig
from edgedet.frames.images import ImagesSource


def write_images(folder):
    """a.png (RGB red), b.png (greyscale), c.png (RGBA blue), d.gif (palette green) + non-images."""
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "a.png")
    Image.new("L", (20, 10), 128).save(folder / "b.png")
    Image.new("RGBA", (16, 16), (0, 0, 255, 100)).save(folder / "c.png")
    Image.new("P", (8, 8), 0).save(folder / "d.gif")  # palette index 0 -> black by default
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage that only looks like a JPEG start")
    return folder




def test_plays_each_image_once_as_rgb_then_is_exhausted_when_loop_is_false(tmp_path, caplog):
    folder = write_images(tmp_path / "imgs")
    caplog.set_level(logging.WARNING, logger="edgedet.frames.images")
    with open_source(SourceConfig(type="images", path=str(folder), fps=0, loop=False)) as source:
        frames = read_all(source)
        assert source.read(1.0) is None  # stays exhausted
        info = source.describe()
    assert [f.frame_id for f in frames] == [0, 1, 2, 3]
    assert [f.image.shape for f in frames] == [(30, 40, 3), (10, 20, 3), (16, 16, 3), (8, 8, 3)]
    assert all(f.image.dtype == np.uint8 for f in frames)
    assert tuple(frames[0].image[0, 0]) == (255, 0, 0)  # red stays red: RGB, not BGR
    assert tuple(frames[1].image[0, 0]) == (128, 128, 128)  # greyscale expanded to three channels
    assert tuple(frames[2].image[0, 0])[2] == 255  # RGBA -> RGB keeps blue
    assert info["images"] == 4 and info["skipped"] == 2 and info["type"] == "images"
    warned = sorted(r.getMessage().split(":")[0] for r in caplog.records if r.levelno == logging.WARNING)
    assert warned == sorted([str(folder / "broken.jpg"), str(folder / "notes.txt")])


def test_loop_replays_and_warns_only_once_per_non_image(tmp_path, caplog):
    folder = write_images(tmp_path / "imgs")
    caplog.set_level(logging.WARNING, logger="edgedet.frames.images")
    with ImagesSource(str(folder), fps=0, loop=True) as source:
        frames = read_all(source, limit=10)
    assert len(frames) == 10
    assert np.array_equal(frames[0].image, frames[4].image)
    assert np.array_equal(frames[1].image, frames[9].image)
    assert [f.frame_id for f in frames] == list(range(10))
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 2


def test_glob_selects_matching_files_in_name_order(tmp_path):
    folder = write_images(tmp_path / "imgs")
    with ImagesSource(str(folder / "*.png"), fps=0, loop=False) as source:
        frames = read_all(source)
    assert [f.image.shape for f in frames] == [(30, 40, 3), (10, 20, 3), (16, 16, 3)]


def test_a_body_that_fails_to_decode_is_skipped_for_good(tmp_path, caplog):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (64, 64), (0, 255, 0)).save(folder / "good.png")
    Image.new("RGB", (64, 64), (0, 0, 255)).save(folder / "truncated.png")
    data = (folder / "truncated.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])  # header intact, body cut
    caplog.set_level(logging.WARNING, logger="edgedet.frames.images")
    with ImagesSource(str(folder), fps=0, loop=True) as source:
        frames = read_all(source, limit=4)
    assert len(frames) == 4 and all(tuple(f.image[0, 0]) == (0, 255, 0) for f in frames)
    assert sum("truncated.png" in r.getMessage() for r in caplog.records) == 1


def test_reference_bmps_decode(shared_models):
    with ImagesSource(str(shared_models / "*.bmp"), fps=0, loop=False) as source:
        frames = read_all(source)
    assert len(frames) == 3 and all(f.image.ndim == 3 and f.image.shape[2] == 3 for f in frames)


@pytest.mark.parametrize("setup", ["empty", "only_non_images", "missing"])
def test_a_folder_without_images_is_one_clear_error(tmp_path, setup):
    folder = tmp_path / "imgs"
    if setup != "missing":
        folder.mkdir()
    if setup == "only_non_images":
        (folder / "readme.txt").write_text("hello")
    source = open_source(SourceConfig(type="images", path=str(folder)))
    with pytest.raises(SourceError) as info:
        source.open()
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == EXIT_USAGE
    assert message.startswith(f"source.path {str(folder)!r}: ")
    expected = "no such directory or file" if setup == "missing" else "contains no readable images"
    assert expected in message


def test_images_without_a_path_is_one_clear_error():
    with pytest.raises(SourceError, match=r"^source.path: source.type images needs source.path; set it"):
        open_source(SourceConfig(type="images"))


def test_fps_paces_the_replay(tmp_path):
    folder = write_images(tmp_path / "imgs")
    with ImagesSource(str(folder), fps=40, loop=True) as source:
        frames = read_all(source, limit=5)
    assert frames[-1].captured_mono - frames[0].captured_mono >= 4 / 40 - 1e-3
