"""Does the colour space as libcamera's binding hands it over cost anything in ``yuv420_to_rgb``?

picamera2's ``camera_configuration()["colour_space"]`` is a libcamera ColorSpace whose ``str()`` is
"<libcamera.ColorSpace 'SMPTE170M'>". For each standard YCbCr space this times ``yuv420_to_rgb`` on a
224x224 lores frame (256-byte stride, as on a Pi) given the plain name, the wrapped string and the (fake)
ColorSpace object, in pairs interleaved within each round (order alternating), and reports the median over
rounds of the per-round ratio wrapped/plain and object/plain, beside the plain time, and the numpy time for
scale. The pixels of every form must be identical. Acceptance bound: 10 %. Exit 0 when every space is within
it, 1 otherwise.

    python benchmarks/yuv_colourspace.py [--rounds 31] [--calls 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "fakes"))  # libcamera's ColorSpace, as the fake mirrors it

from libcamera import ColorSpace  # noqa: E402

import edgedet.frames.picamera2 as camera  # noqa: E402

TOLERANCE = 0.10
FACTORIES = {"sYCC": ColorSpace.Sycc, "SMPTE170M": ColorSpace.Smpte170m, "Rec709": ColorSpace.Rec709,
             "Rec2020": ColorSpace.Rec2020}


def per_call_us(buffer: np.ndarray, colour_space: object, calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        camera.yuv420_to_rgb(buffer, 224, 224, colour_space)
    return (time.perf_counter_ns() - start) / calls / 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args(argv)
    if camera._cv2 is None:
        print("opencv-python-headless is not installed: only the numpy path exists", file=sys.stderr)
        return 1
    rng = np.random.default_rng(0)
    buffer = rng.integers(16, 236, size=(336, 256), dtype=np.uint8)
    ok = True
    print(f"yuv420_to_rgb 224x224, {args.rounds} rounds x {args.calls} calls per form")
    print(f"{'space':<10} {'plain us':>9} {'wrapped/plain':>14} {'object/plain':>13} {'numpy us':>9}  same pixels")
    for name, factory in FACTORIES.items():
        forms = {"plain": name, "wrapped": str(factory()), "object": factory()}
        reference = camera.yuv420_to_rgb(buffer, 224, 224, name)
        same = all(np.array_equal(camera.yuv420_to_rgb(buffer, 224, 224, form), reference)
                   for form in forms.values())
        for form in forms.values():  # warm up caches
            per_call_us(buffer, form, 20)
        plain, ratios = [], {"wrapped": [], "object": []}
        for round_index in range(args.rounds):
            for other in ("wrapped", "object"):
                if round_index % 2:
                    other_us = per_call_us(buffer, forms[other], args.calls)
                    plain_us = per_call_us(buffer, name, args.calls)
                else:
                    plain_us = per_call_us(buffer, name, args.calls)
                    other_us = per_call_us(buffer, forms[other], args.calls)
                plain.append(plain_us)
                ratios[other].append(other_us / plain_us)
        saved = camera._cv2
        camera._cv2 = None
        try:
            numpy_us = per_call_us(buffer, name, max(10, args.calls // 20))
        finally:
            camera._cv2 = saved
        wrapped, obj = statistics.median(ratios["wrapped"]), statistics.median(ratios["object"])
        within = same and wrapped <= 1 + TOLERANCE and obj <= 1 + TOLERANCE
        ok &= within
        print(f"{name:<10} {statistics.median(plain):>9.1f} {wrapped:>14.3f} {obj:>13.3f} {numpy_us:>9.1f}  "
              f"{'yes' if same else 'NO'}{'' if within else '  <-- over the bound'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
