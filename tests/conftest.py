"""Shared fixtures. Tests that need the reference models skip with a reason when ../shared is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = Path(os.environ.get("EDGEDET_SHARED_MODELS", REPO.parent / "shared" / "models"))
V1 = "mobilenet_v1_0.25_128_quant.tflite"
V1_EDGETPU = "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
V2 = "mobilenet_v2_1.0_224_quant.tflite"


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """The folder of reference models and images (google-coral/test_data), or skip."""
    if not (SHARED_MODELS / V2).is_file():
        pytest.skip(f"reference models not found in {SHARED_MODELS} (set EDGEDET_SHARED_MODELS or put "
                    "the shared/ folder beside the repository)")
    return SHARED_MODELS
