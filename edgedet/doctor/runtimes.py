"""Which TFLite runtimes are installed, their versions with NumPy's, whether each pair works (import and one
invoke, each in a subprocess: tflite-runtime built for NumPy 1 can crash the interpreter under NumPy 2), and
which one ``runtime: auto`` picks and why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from edgedet.doctor import Context, Item
from edgedet.model.runtime import AUTO_ORDER, RUNTIMES

G = "runtimes"
TIMEOUT_S = 20.0
# Another Python to check tflite-runtime in (a second venv on the box, as the tests use).
TFLITE_PYTHON_ENV = "EDGEDET_TFLITE_RUNTIME_PYTHON"

PROBE = r"""
import importlib, json, sys
from importlib import metadata
module, dists, model = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
out = {"python": sys.version.split()[0]}
try:
    import numpy
    out["numpy"] = numpy.__version__
except Exception as exc:
    out["numpy"] = "not importable: %s" % exc
for dist in dists:
    try:
        out["version"] = metadata.version(dist)
        break
    except metadata.PackageNotFoundError:
        pass
print(json.dumps(out), flush=True)
mod = importlib.import_module(module)
out["imported"] = True
print(json.dumps(out), flush=True)
if model:
    it = mod.Interpreter(model_path=model)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], numpy.zeros(d["shape"], d["dtype"]))
    it.invoke()
    out["invoked"] = True
print(json.dumps(out), flush=True)
"""


def _installed(name: str, python: str) -> Optional[str]:
    if python != sys.executable:
        return "?"  # another Python: its probe reads the version
    for dist in RUNTIMES[name][1]:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def probe(name: str, python: str, model: Optional[Path], timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """Import ``name``'s module (and invoke ``model`` once) in a fresh ``python``; what it got to, and why not."""
    module, dists = RUNTIMES[name]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    try:
        proc = subprocess.run([python, "-c", PROBE, module, ",".join(dists), str(model or "")],
                              capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout_s:.0f} s"}
    except OSError as exc:
        return {"error": f"cannot run {python} ({exc.strerror})"}
    result: dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        try:
            result = json.loads(line)
        except ValueError:
            continue
    if proc.returncode != 0:
        err = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        text = next((line for line in err if "_ARRAY_API" in line or "numpy.core.multiarray" in line), None) \
            or (err[-1] if err else "")
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        result["error"] = f"{how}: {text[:200]}" if text else how
    return result


def _fix(name: str, result: dict[str, Any]) -> str:
    numpy = str(result.get("numpy", ""))
    if name == "tflite-runtime" and (numpy.startswith("2") or "_ARRAY_API" in str(result.get("error"))):
        return "tflite-runtime 2.14 needs NumPy 1: pip install 'numpy<2', or use ai-edge-litert (pip install " \
               "ai-edge-litert) and uninstall tflite-runtime"
    if not result.get("imported"):
        return f"reinstall it (pip install --force-reinstall {RUNTIMES[name][1][0]}) or uninstall it"
    return "the runtime imports but cannot run the bundled model: reinstall it, or pick another model.runtime"


def check(ctx: Context) -> list[Item]:
    from edgedet.model.config import default_model_path

    model = default_model_path()
    tflite_python = ctx.environ.get(TFLITE_PYTHON_ENV) or sys.executable
    pythons = {name: (tflite_python if name == "tflite-runtime" else sys.executable) for name in AUTO_ORDER}
    present = {name: v for name in AUTO_ORDER if (v := _installed(name, pythons[name])) is not None}
    # TensorFlow takes seconds to import; it is only tried when auto would reach it or config names it.
    wanted = [n for n in present if n != "tensorflow" or ctx.config.classifiers()[0].runtime == "tensorflow"
              or not ({"litert", "tflite-runtime"} & set(present))]
    with ThreadPoolExecutor(max_workers=max(1, len(wanted))) as pool:
        results = dict(zip(wanted, pool.map(lambda n: probe(n, pythons[n], model), wanted)))
    items = []
    for name in AUTO_ORDER:
        if name not in present:
            items.append(Item(G, name, "skip", "not installed"))
            continue
        if name not in results:
            items.append(Item(G, name, "skip", f"{present[name]} installed; not imported (seconds to import; "
                                               "auto prefers the runtimes above)"))
            continue
        r = results[name]
        where = "" if pythons[name] == sys.executable else f" in {pythons[name]}"
        fact = f"{r.get('version', present[name])} with NumPy {r.get('numpy', '?')}{where}"
        if "error" in r or (model is not None and not r.get("invoked")):
            stage = "invoke" if r.get("imported") else "import"
            items.append(Item(G, name, "fail", f"{fact}: {stage} failed ({r.get('error', 'no result')})",
                              _fix(name, r)))
        else:
            items.append(Item(G, name, "ok", fact + (", one invoke ok" if model else ", imports (no bundled "
                                                     "model to invoke)")))
    items.append(_selected(ctx))
    return items


def _selected(ctx: Context) -> Item:
    first = ctx.config.classifiers()[0]  # with models:, the first classifier's (as the daemon's log line)
    requested, delegate = first.runtime, first.delegate
    # select_runtime imports in this process; a runtime that crashes under this NumPy must not kill us.
    code = ("import sys; from edgedet.model.runtime import select_runtime as s; "
            "r = s(sys.argv[1], sys.argv[2]); print(r.name, r.version, '|', r.reason)")
    try:
        proc = subprocess.run([sys.executable, "-c", code, requested, delegate], capture_output=True, text=True,
                              timeout=TIMEOUT_S, env={**os.environ, "PYTHONPATH": _edgedet_root()})
    except subprocess.TimeoutExpired:
        return Item(G, "selected", "fail", f"runtime {requested}: no answer within {TIMEOUT_S:.0f} s",
                    "see the runtime lines above")
    if proc.returncode == 0:
        picked, _, reason = (part.strip() for part in proc.stdout.partition("|"))
        why = reason or ("named in model.runtime" if requested != "auto"
                         else "the first importable of " + ", ".join(AUTO_ORDER))
        return Item(G, "selected", "ok", f"model.runtime {requested} -> {picked} ({why})")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    text = lines[-1] if lines else f"exit {proc.returncode}"
    text = text.split(": ", 1)[1] if text.startswith("edgedet.errors.") and ": " in text else text
    message, _, fix = text.partition("; ")
    return Item(G, "selected", "fail", f"model.runtime {requested}: {message}",
                fix or "install a runtime: pip install ai-edge-litert (or set model.runtime to one that works)")


def _edgedet_root() -> str:
    root = str(Path(__file__).resolve().parents[2])
    rest = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{rest}" if rest else root
