"""``runtime: auto`` with the Edge TPU: which runtime pairs with the installed libedgetpu, and why.

No Coral here and no libedgetpu package: the package is given as dpkg would report it, and the runtimes
are the real installed ones (tensorflow-cpu in this venv, tflite-runtime 2.14 in the second venv).
"""

from __future__ import annotations

import logging
import os
import subprocess
from importlib import metadata

import pytest

from edgedet.model.runtime import LibedgetpuPackage, installed_libedgetpu, paired_runtime, select_runtime

OTHER_PYTHON = os.environ.get("EDGEDET_TFLITE_RUNTIME_PYTHON")


def test_the_tensorflow_version_is_read_from_the_maintained_builds_debian_version():
    for version, tf in (("16.0tf2.17.1-1.bookworm", "2.17.1"), ("16.0TF2.19.1-1.trixie", "2.19.1"),
                        ("16.0tf2.17.1-1", "2.17.1"), ("16.0", None), ("15.0", None)):
        assert LibedgetpuPackage.from_dpkg("libedgetpu1-max:arm64", version).tf_version == tf, version
    assert LibedgetpuPackage.from_dpkg("libedgetpu1-max:arm64", "16.0").package == "libedgetpu1-max"


def test_no_package_or_no_tf_version_keeps_the_usual_order(caplog):
    assert installed_libedgetpu() is None  # this machine has no libedgetpu package
    caplog.set_level(logging.DEBUG, logger="edgedet.model.runtime")
    assert paired_runtime(LibedgetpuPackage.from_dpkg("libedgetpu1-std", "16.0")) is None  # Google's build
    assert "TensorFlow version is unknown" in caplog.text
    assert select_runtime("auto", "edgetpu").name == "litert"


def test_a_runtime_of_libedgetpus_tf_version_is_preferred_and_the_reason_logged(caplog):
    try:
        tf_version = metadata.version("tensorflow-cpu")
    except metadata.PackageNotFoundError:
        pytest.skip("tensorflow-cpu (the host extra) is not installed: no second TF-versioned runtime here")
    major_minor = ".".join(tf_version.split(".")[:2])
    package = LibedgetpuPackage.from_dpkg("libedgetpu1-max", f"16.0tf{major_minor}.1-1.bookworm")
    caplog.set_level(logging.INFO, logger="edgedet.model.runtime")
    runtime = paired_runtime(package)
    assert runtime is not None and runtime.name == "tensorflow" and runtime.version == tf_version
    assert runtime.reason == f"pairs with libedgetpu1-max 16.0tf{major_minor}.1-1.bookworm (built for TF " \
                             f"{major_minor}.1)"
    assert f"runtime auto: tensorflow {tf_version}, which pairs with libedgetpu1-max" in caplog.text
    # A version no installed runtime has: no pairing, the usual order (litert first).
    assert paired_runtime(LibedgetpuPackage.from_dpkg("libedgetpu1-max", "16.0tf2.1.0-1")) is None


@pytest.mark.skipif(not OTHER_PYTHON, reason="EDGEDET_TFLITE_RUNTIME_PYTHON not set (scripts/test builds the "
                                             "tflite-runtime 2.14 venv where Python <= 3.11 exists)")
def test_tflite_runtime_pairs_with_a_libedgetpu_of_its_tf_version():
    code = ("from edgedet.model.runtime import LibedgetpuPackage, paired_runtime\n"
            "r = paired_runtime(LibedgetpuPackage.from_dpkg('libedgetpu1-std', '16.0tf2.14.0-1.bookworm'))\n"
            "print(r.name, r.version, '|', r.reason)\n")
    out = subprocess.run([OTHER_PYTHON, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}).stdout
    assert out.startswith("tflite-runtime 2.14"), out
    assert "pairs with libedgetpu1-std 16.0tf2.14.0-1.bookworm (built for TF 2.14.0)" in out
