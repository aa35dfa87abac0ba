"""Accuracy against cost (MACs or latency): the Pareto frontier and its chart, for ``bench`` and ``sweep``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from edgedet.errors import ConfigError


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: none has cost <= and accuracy >= with one strictly better.

    ``points`` are (cost, accuracy); the result is sorted by cost.
    """
    front = []
    for i, (cost, acc) in enumerate(points):
        dominated = any(c <= cost and a >= acc and (c < cost or a > acc) for j, (c, a) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a Pi over ssh; must precede pyplot
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("the chart needs matplotlib", fix="pip install 'edgedet[bench]'") from None
    return plt


def draw_pareto(axis: Any, names: list[str], costs: list[float], accuracies: list[float], cost_label: str) -> None:
    """Scatter accuracy (%) against cost, every point named, the frontier joined and highlighted."""
    front = pareto_front(list(zip(costs, accuracies)))
    on_front = set(front)
    for i, name in enumerate(names):
        axis.scatter(costs[i], accuracies[i], color="tab:red" if i in on_front else "tab:gray", zorder=3)
        axis.annotate(name, (costs[i], accuracies[i]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axis.step([costs[i] for i in front], [accuracies[i] for i in front], where="post", color="tab:red",
              label="Pareto frontier", zorder=2)
    if len(set(costs)) > 1 and min(costs) > 0 and max(costs) / min(costs) > 20:
        axis.set_xscale("log")
    axis.set_xlabel(cost_label)
    axis.set_ylabel("top-1 accuracy (%)")
    axis.grid(True, alpha=0.3)
    axis.legend(loc="lower right")


def save(figure: Any, target: Path, plt: Optional[Any] = None) -> None:
    try:
        figure.savefig(target, dpi=100)
    except OSError as err:
        raise ConfigError(f"cannot write the chart ({err.strerror})", where=target) from None
    finally:
        (plt or pyplot()).close(figure)
