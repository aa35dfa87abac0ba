"""``edgedet bench``: latency, size, cost and accuracy of TFLite models on this machine, side by side.

One module per job: :mod:`.cli` (the subcommand's arguments and entry), :mod:`.data` (labelled images, label
matching, accuracy), :mod:`.measure` (one model at one thread count, stage timing, latency statistics, peak
RSS), :mod:`.conditions` (CPU governor, temperature, throttling), :mod:`.report` (table, CSV, plot, budget
choice) and :mod:`.pipeline` (the frame-loop benchmark of ``--pipeline`` and benchmarks/pipeline.py).

The daemon (``edgedet run``) never imports this package.
"""

from __future__ import annotations

from edgedet.bench.cli import bench_main
from edgedet.bench.data import collect_images, label_ids_for
from edgedet.bench.measure import bench_one, latency_stats, timed_stages
from edgedet.bench.report import budget_choice, render_csv, render_table, write_plot

__all__ = ["bench_main", "bench_one", "budget_choice", "collect_images", "label_ids_for", "latency_stats",
           "render_csv", "render_table", "timed_stages", "write_plot"]
