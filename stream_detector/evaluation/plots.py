"""One PNG per key: what the data did, what the model thought, and where each method alerted.

Drawn on matplotlib's object API with the Agg canvas, never pyplot, so nothing global (backend,
current figure) is touched and figures are freed as soon as they are saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stream_detector.evaluation.datasets import Channel
from stream_detector.evaluation.metrics import label_ranges
from stream_detector.evaluation.trace import MethodTrace

# Distinct, colour-blind-safe colours for the methods' episode bars (Okabe-Ito).
_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9")


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_key(
    path: Path, channel: Channel, key_id: int, traces: Sequence[MethodTrace], model_method: str
) -> None:
    """Values with labelled ranges shaded; the model's score and threshold; episodes per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_values, ax_score, ax_episodes = fig.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.2]}
    )
    steps = np.arange(len(channel.test_ts))
    ax_values.plot(steps, channel.test_values, linewidth=0.7, color="black")
    ax_values.set_ylabel("value")
    ax_values.set_title(f"{channel.key} ({channel.group}), test part; shaded: labelled anomalies")

    model = next((t for t in traces if t.name == model_method), None)
    if model is not None and key_id in model.scores:
        table = model.scores[key_id]
        ax_score.plot(table[:, 0], table[:, 1], linewidth=0.7, label="score")
        ax_score.plot(table[:, 0], table[:, 2], linewidth=0.9, color="red", label="threshold")
        if np.all(table[:, 1:] > 0):
            ax_score.set_yscale("log")
        ax_score.legend(loc="upper left", fontsize="small")
    ax_score.set_ylabel(f"{model_method}\nscore")

    for i, trace in enumerate(traces):
        episodes = trace.episodes.get(key_id, np.empty((0, 2)))
        bars = [(float(a), float(b - a + 1)) for a, b in episodes.tolist()]
        ax_episodes.broken_barh(bars, (i - 0.4, 0.8), color=_COLOURS[i % len(_COLOURS)])
    ax_episodes.set_yticks(range(len(traces)), [t.name for t in traces], fontsize="small")
    ax_episodes.set_ylim(-0.6, len(traces) - 0.4)
    ax_episodes.set_xlabel("test step")
    ax_episodes.set_title("alert episodes", fontsize="small")

    for start, end in label_ranges(channel.test_labels).tolist():
        for ax in (ax_values, ax_score, ax_episodes):
            ax.axvspan(start, end + 1, color="red", alpha=0.15, linewidth=0)
    fig.savefig(path, dpi=80)
