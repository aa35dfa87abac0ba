"""What the benchmark scripts share: paired rounds with the order alternating, a process's CPU time, a free
port, the environment that runs a checkout's edgedet. Imported by the scripts beside it (``python
benchmarks/NAME.py`` puts this folder first on the path)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable, TypeVar, Union, cast

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")
K = TypeVar("K")


def interleaved(rounds: int, sides: dict[K, Callable[[], T]]) -> list[dict[K, T]]:
    """Each side once per round, back to back, in the dict's order in even rounds and reversed in odd ones (so
    no side always runs first, or always right after the same one): each round's results by side."""
    order = list(sides)
    return [{key: sides[key]() for key in (order if i % 2 == 0 else order[::-1])} for i in range(rounds)]


def alternating(pairs: int, measure: Callable[[bool], T]) -> list[dict[bool, T]]:
    """``measure(False)`` and ``measure(True)`` back to back, ``pairs`` times, the order alternating."""
    return interleaved(pairs, {False: lambda: measure(False), True: lambda: measure(True)})


def paired(pairs: int, first: Callable[[], A], second: Callable[[], B]) -> list[tuple[A, B]]:
    """:func:`alternating` over two callables: ``(first's result, second's result)`` per pair."""

    def measure(flag: bool) -> Union[A, B]:
        return second() if flag else first()

    return [(cast(A, run[False]), cast(B, run[True])) for run in alternating(pairs, measure)]


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def task_cpu_ns(pid: int) -> dict[int, int]:
    """The CPU time of each live thread of the process so far, by thread id, to the nanosecond
    (/proc/PID/task/*/schedstat, first field). :func:`cpu_seconds` counts clock ticks of 10 ms: over a 3 s window
    at 30 fps that is 0.13 ms a frame. A thread that ended is not listed: see :func:`cpu_between`."""
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            times[int(task.name)] = int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):  # the thread ended between the listing and the read
            continue
    return times


def cpu_between(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds the process used between two :func:`task_cpu_ns` readings. A thread that started or ended in
    between would make the sum wrong (an ended thread's time is no longer listed), so that raises."""
    if before.keys() != after.keys():
        raise RuntimeError(f"threads started or ended during the measured window (before {sorted(before)}, after "
                           f"{sorted(after)}): the CPU time of an ended one cannot be read")
    return sum(after[tid] - before[tid] for tid in after) / 1e9


def checkout_env(checkout: Path) -> dict[str, str]:
    """The environment for a subprocess that must run ``checkout``'s edgedet: it first on PYTHONPATH. Start the
    subprocess outside any other checkout too: ``python -m`` and ``-c`` put the working directory first."""
    return {**os.environ, "PYTHONPATH": str(checkout)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
