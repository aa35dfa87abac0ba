"""The real daemon (``edgedet.cli.main``) with an interpreter whose invoke() never returns after N frames.

Test seam for the hung-Edge-TPU tests: ``python tests/hang_driver.py HANG_AFTER cpu|offcpu <edgedet arguments>``
(offcpu: the interpreter says it leaves the CPU free, as the Edge TPU does, so the overlapped loop runs). The
model, the runtime, the pipeline and the loop are the real ones; only the interpreter the classifier builds is
wrapped (Classifier's ``interpreter_factory``): its first HANG_AFTER invoke() calls run, and the next one
writes ``invoke hanging`` to stderr and blocks forever, as a USB Coral that stopped answering does.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import edgedet.pipeline
from edgedet.cli import main
from edgedet.model.classifier import Classifier
from edgedet.model.config import ModelConfig
from edgedet.model.runtime import Runtime, make_interpreter


class HangingInterpreter:
    def __init__(self, real: Any, hang_after: int, leaves_cpu_free: bool) -> None:
        self._real, self._left = real, hang_after
        self.leaves_cpu_free = leaves_cpu_free

    def invoke(self) -> None:
        if self._left <= 0:
            sys.stderr.write("invoke hanging\n")
            sys.stderr.flush()
            threading.Event().wait()
        self._left -= 1
        self._real.invoke()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class HangingClassifier(Classifier):
    @classmethod
    def from_config(cls, cfg: ModelConfig, *, auto_threads: int | None = None, **_: Any) -> Classifier:
        hang_after = int(sys.argv[1]) + 1  # + the classifier's own first invoke at load

        def factory(path: Path, runtime: Runtime, threads: int, delegates: list[Any]) -> HangingInterpreter:
            return HangingInterpreter(make_interpreter(path, runtime, threads, delegates), hang_after,
                                      sys.argv[2] == "offcpu")

        return Classifier(cfg, auto_threads=auto_threads, interpreter_factory=factory)


if __name__ == "__main__":
    edgedet.pipeline.Classifier = HangingClassifier  # type: ignore[misc]
    raise SystemExit(main(sys.argv[3:]))
