"""A SIMULATED accelerator for tests and benchmarks (this machine has no Edge TPU); never used by ``run``.

:func:`simulated_accelerator` is an ``interpreter_factory`` for :class:`~edgedet.model.classifier.Classifier`:
it builds the real interpreter and wraps it so that ``invoke()`` waits ``invoke_s`` with the GIL released
(``time.sleep``), as an Edge TPU invoke leaves the CPU to other threads. ``time.sleep`` wakes late (timer
slack, scheduling), so a plain sleep of ``invoke_s`` would simulate a slower accelerator than asked for: each
sleep is shortened so that the median invoke takes ``invoke_s`` (the README has the measured figures). With
``compute=False`` the scores are the real model's for one fixed input tensor, computed once (the CPU stays free
during every invoke); with ``compute=True`` each invoke also runs the real model on the frame it was given
(real scores for real frames, for tests that compare results, the CPU busy meanwhile).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgedet.model.classifier import InterpreterFactory
from edgedet.model.runtime import Runtime, make_interpreter


class SimulatedAccelerator:
    """The real interpreter's API (it is delegated to), with a simulated off-CPU ``invoke()``."""

    leaves_cpu_free = True  # read by Classifier.leaves_cpu_free
    # How much shorter than invoke_s each sleep is asked for moves by one step per invoke: up after an invoke
    # that took longer than invoke_s, down after one that did not. It settles where half take longer, so the
    # median invoke is invoke_s; a spike of a few ms moves it by one step, not by the spike.
    HEAD_START_STEP_S = 5e-6

    def __init__(self, interpreter: Any, invoke_s: float, compute: bool, *,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.perf_counter) -> None:
        self._real, self.invoke_s, self.compute = interpreter, invoke_s, compute
        self._sleep, self._clock = sleep, clock
        self.head_start_s = 0.0
        if not compute:
            detail = interpreter.get_input_details()[0]
            fixed = np.random.default_rng(0).integers(0, 256, detail["shape"]).astype(detail["dtype"])
            interpreter.set_tensor(detail["index"], fixed)
            interpreter.invoke()  # the output tensor keeps these scores: no later invoke overwrites them

    def invoke(self) -> None:
        started = self._clock()
        self._sleep(max(0.0, self.invoke_s - self.head_start_s))
        if self._clock() - started > self.invoke_s:
            self.head_start_s = min(self.invoke_s, self.head_start_s + self.HEAD_START_STEP_S)
        else:
            self.head_start_s = max(0.0, self.head_start_s - self.HEAD_START_STEP_S)
        if self.compute:
            self._real.invoke()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def simulated_accelerator(invoke_s: float, compute: bool = False) -> InterpreterFactory:
    def factory(model_path: Path, runtime: Runtime, num_threads: int, delegates: list[Any]) -> SimulatedAccelerator:
        return SimulatedAccelerator(make_interpreter(model_path, runtime, num_threads, delegates), invoke_s, compute)

    return factory
