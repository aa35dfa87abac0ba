"""Procedurally drawn scenes of the seed's two classes: a yellow creature and everything else.

The positive class is a yellow creature (round head, body, black-tipped ears, red cheeks, black eyes) in
varied poses, scales, positions and backgrounds; the negative class holds other shapes and scenes, including
yellow distractors without the ears and cheeks so the classes do not split on colour alone. Everything is
drawn with Pillow from one ``numpy`` generator, so a seed fixes every pixel. Shared by the host script's
``synth-dataset`` and the daemon's synthetic source (which must show real classifications with the bundled
model), so it needs nothing but Pillow and numpy.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

POSITIVE = "pikachu"
NEGATIVE = "no-pikachu"
# Drawn at this multiple of the output size and downsampled with LANCZOS, for smooth edges.
SUPERSAMPLE = 3

Color = tuple[int, int, int]


def _jitter(rng: np.random.Generator, base: Color, amount: int) -> Color:
    jittered = (int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in base)
    return tuple(jittered)  # type: ignore[return-value]


def _random_color(rng: np.random.Generator) -> Color:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def _background(rng: np.random.Generator, side: int) -> Image.Image:
    """A plain colour, a two-colour gradient, a noisy texture or a few random blobs."""
    kind = rng.integers(0, 4)
    if kind == 0:
        return Image.new("RGB", (side, side), _random_color(rng))
    if kind == 1:
        start, end = np.array(_random_color(rng), float), np.array(_random_color(rng), float)
        ramp = np.linspace(0.0, 1.0, side)[:, None, None]
        rows = (start * (1 - ramp) + end * ramp).astype(np.uint8)
        gradient = np.repeat(rows, side, axis=1)
        image = Image.fromarray(gradient, "RGB")
        return image.rotate(float(rng.uniform(0, 360)), resample=Image.Resampling.BILINEAR, expand=False,
                            fillcolor=tuple(int(c) for c in start))
    if kind == 2:
        base = np.array(_random_color(rng), float)
        noise = rng.normal(0, 40, size=(side // 8 + 1, side // 8 + 1, 3))
        small = np.clip(base + noise, 0, 255).astype(np.uint8)
        return Image.fromarray(small, "RGB").resize((side, side), Image.Resampling.BILINEAR)
    image = Image.new("RGB", (side, side), _random_color(rng))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        x, y = rng.uniform(-0.2, 1.0, size=2) * side
        w, h = rng.uniform(0.2, 0.6, size=2) * side
        draw.ellipse([x, y, x + w, y + h], fill=_random_color(rng))
    return image


def _ear(cx: float, cy: float, radius: float, angle: float, spread: float) -> tuple[list, list]:
    """The polygon of one pointed ear and of its black tip (outer third)."""
    base_half = radius * 0.28
    length = radius * 1.35
    direction = np.array([math.sin(angle), -math.cos(angle)])
    normal = np.array([direction[1], -direction[0]])
    base_centre = np.array([cx, cy]) + direction * radius * 0.7 + normal * spread
    tip = base_centre + direction * length
    left, right = base_centre + normal * base_half, base_centre - normal * base_half
    cut = 0.62  # where the black tip starts, as a fraction from base to tip
    tip_left, tip_right = left + (tip - left) * cut, right + (tip - right) * cut
    ear = [tuple(left), tuple(tip), tuple(right)]
    tip_polygon = [tuple(tip_left), tuple(tip), tuple(tip_right)]
    return ear, tip_polygon


def _draw_creature(image: Image.Image, rng: np.random.Generator) -> None:
    """The positive class: a yellow creature with black-tipped ears and red cheeks."""
    side = image.width
    draw = ImageDraw.Draw(image)
    radius = float(rng.uniform(0.14, 0.26)) * side
    cx = float(rng.uniform(radius * 1.1, side - radius * 1.1))
    cy = float(rng.uniform(radius * 1.9, side - radius * 1.1))
    yellow = _jitter(rng, (250, 215, 40), 25)
    outline = (60, 40, 0)
    tilt = float(rng.uniform(-0.5, 0.5))  # head tilt in radians: the "pose"
    if rng.random() < 0.7:  # a body below the head in most poses
        body_w, body_h = radius * rng.uniform(1.0, 1.4), radius * rng.uniform(1.0, 1.5)
        by = cy + radius * 0.6
        draw.ellipse([cx - body_w, by, cx + body_w, by + body_h * 1.4], fill=yellow, outline=outline,
                     width=max(1, side // 96))
    for sign in (-1, 1):
        ear_angle = tilt + sign * float(rng.uniform(0.35, 0.8))
        ear, tip = _ear(cx, cy, radius, ear_angle, sign * radius * 0.15)
        draw.polygon(ear, fill=yellow, outline=outline)
        draw.polygon(tip, fill=(15, 15, 15))
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=yellow, outline=outline,
                 width=max(1, side // 96))
    # Face features rotate with the head tilt.
    cos_t, sin_t = math.cos(tilt), math.sin(tilt)

    def at(dx: float, dy: float) -> tuple[float, float]:
        return cx + dx * cos_t - dy * sin_t, cy + dx * sin_t + dy * cos_t

    eye_r = radius * 0.13
    for sign in (-1, 1):
        ex, ey = at(sign * radius * 0.38, -radius * 0.15)
        draw.ellipse([ex - eye_r, ey - eye_r, ex + eye_r, ey + eye_r], fill=(10, 10, 10))
        draw.ellipse([ex - eye_r * 0.35, ey - eye_r * 0.7, ex + eye_r * 0.25, ey - eye_r * 0.1],
                     fill=(250, 250, 250))
        cheek_r = radius * 0.2
        kx, ky = at(sign * radius * 0.62, radius * 0.3)
        draw.ellipse([kx - cheek_r, ky - cheek_r, kx + cheek_r, ky + cheek_r],
                     fill=_jitter(rng, (225, 30, 30), 20))
    mx, my = at(0, radius * 0.35)
    draw.arc([mx - radius * 0.18, my - radius * 0.12, mx + radius * 0.18, my + radius * 0.12], 20, 160,
             fill=(40, 10, 10), width=max(1, side // 80))


def _draw_other(image: Image.Image, rng: np.random.Generator) -> None:
    """The negative class: other shapes, some of them yellow and round, none with ears and cheeks."""
    side = image.width
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.integers(0, 5)
        color = _jitter(rng, (250, 215, 40), 25) if rng.random() < 0.35 else _random_color(rng)
        size = float(rng.uniform(0.15, 0.45)) * side
        x, y = rng.uniform(0, side - size, size=2)
        if kind == 0:  # a plain disc, the hardest distractor when yellow
            draw.ellipse([x, y, x + size, y + size], fill=color, outline=(60, 40, 0))
        elif kind == 1:
            draw.rectangle([x, y, x + size, y + size * rng.uniform(0.4, 1.0)], fill=color)
        elif kind == 2:
            draw.polygon([(x, y + size), (x + size / 2, y), (x + size, y + size)], fill=color)
        elif kind == 3:  # a house: a box under a roof
            draw.rectangle([x, y + size * 0.4, x + size, y + size], fill=color)
            draw.polygon([(x, y + size * 0.4), (x + size / 2, y), (x + size, y + size * 0.4)],
                         fill=_random_color(rng))
        else:
            draw.line([(x, y), (x + size, y + size * rng.uniform(-1, 1))], fill=color,
                      width=max(2, side // 30))


def make_image(rng: np.random.Generator, size: int, positive: bool) -> Image.Image:
    """One ``size`` x ``size`` RGB image of the positive or negative class."""
    big = size * SUPERSAMPLE
    image = _background(rng, big)
    if positive:
        _draw_creature(image, rng)
    else:
        _draw_other(image, rng)
    image = image.resize((size, size), Image.Resampling.LANCZOS)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    return image
