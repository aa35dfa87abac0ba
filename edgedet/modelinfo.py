"""``edgedet models info FILE``: what a .tflite file holds (the catalogue's ``models info NAME`` is apart)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgedet.model.tflite_file import read_tflite


def show_model_file(path: str | Path, as_json: bool = False) -> int:
    """Print what a .tflite file holds: inputs, outputs, ops, Edge TPU compilation, size, sha256."""
    model = read_tflite(path)
    data: dict[str, Any] = {
        "path": str(model.path), "size_bytes": model.size_bytes, "sha256": model.sha256,
        "edgetpu_compiled": model.is_edgetpu, "description": model.description,
        "inputs": [t.as_dict() for t in model.inputs], "outputs": [t.as_dict() for t in model.outputs],
        "ops": model.op_counts(), "op_versions": model.op_versions(),
        "normalization": ({"mean": model.metadata_normalization[0], "std": model.metadata_normalization[1],
                           "source": "metadata"} if model.metadata_normalization else None),
        "embedded_labels": len(model.embedded_labels) if model.embedded_labels else 0,
        "sidecar": str(model.sidecar_path()) if model.sidecar else None,
    }
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"{model.path}  ({model.size_bytes:,} bytes, sha256 {model.sha256})")
    print(f"  compiled for the Edge TPU: {'yes' if model.is_edgetpu else 'no'}")
    for kind in ("inputs", "outputs"):
        for t in data[kind]:
            q = t["quantization"]
            qs = f" scale={q['scale']:.6g} zero_point={q['zero_point']}" if q else ""
            print(f"  {kind[:-1]:6s} {t['name']}: {t['shape']} {t['dtype']}{qs}")
    if data["normalization"]:
        print(f"  normalization (metadata): mean={data['normalization']['mean']} std={data['normalization']['std']}")
    print(f"  labels embedded: {data['embedded_labels']}")
    print("  ops: " + ", ".join(f"{name} x{count} (v{data['op_versions'][name]})"
                               for name, count in data["ops"].items()))
    return 0
