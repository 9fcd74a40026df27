"""The demo's two faces: a live terminal view, and plain lines for a pipe, a log file or CI.

Both take the same snapshots from the runner, so what a test reads from the plain view is what a
person watches in the terminal. The plain view ends with one JSON line holding the summary, the
one line a script needs to parse.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from stream_detector.demo.monitor import ServiceNumbers
from stream_detector.demo.scoreboard import Score

_SEVERITY_STYLE = {"low": "yellow", "medium": "dark_orange", "high": "red", "critical": "bold red"}
_PLAIN_EVERY_S = 5.0
RECENT_ALERTS = 6


@dataclass(frozen=True)
class DemoInfo:
    """What stays fixed for a run, shown in the header."""

    bootstrap: str
    input_topic: str
    alert_topic: str
    metrics_url: str
    model_version: str
    model_source: str
    feed: str  # what is played, e.g. "200 devices at 2000 events/s"
    duration_s: float | None


@dataclass(frozen=True)
class AlertLine:
    """One alert as shown: its CloudEvent data and the injected anomaly kind it matched."""

    data: dict[str, Any]
    matched: str | None


@dataclass(frozen=True)
class Snapshot:
    """Everything shown at one refresh; the runner builds it, so the views hold no state but
    their own layout."""

    elapsed_s: float
    events_per_s: float
    produced: int
    service: ServiceNumbers | None
    score: Score
    recent: Sequence[AlertLine]


class DemoView(Protocol):
    """What the runner tells a view, in order: phases (and training progress) while setting up,
    `start` once the run is live, `update`/`alert` while it runs, `finish` with the summary;
    `close` on any way out, so a terminal is always handed back."""

    def phase(self, text: str) -> None: ...

    def training_progress(self, epochs: int) -> Callable[[dict[str, Any]], None]: ...

    def start(self, info: DemoInfo) -> None: ...

    def update(self, snapshot: Snapshot) -> None: ...

    def alert(self, line: AlertLine) -> None: ...

    def finish(self, summary: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _feature(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _top_features(data: dict[str, Any], limit: int | None = None) -> str:
    return ", ".join(
        f"{_feature(f['name'])} {f['actual']:.4g} (exp {f['expected']:.4g})"
        for f in data.get("top_features", [])[:limit]
    )


def _clock(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%H:%M:%S")


def _score_line(score: Score) -> str:
    return (
        f"injected={score.injected} detected={score.detected} pending={score.pending} "
        f"episodes={score.episodes} false_positives={score.false_positives} "
        f"precision={_ratio(score.precision)} recall={_ratio(score.recall)}"
    )


class PlainView:
    """Lines on stdout: progress every few seconds, one per alert, the summary as JSON last."""

    def __init__(self) -> None:
        self._last_status = -_PLAIN_EVERY_S

    def _print(self, text: str) -> None:
        print(text, flush=True)

    def phase(self, text: str) -> None:
        self._print(f"demo: {text}")

    def training_progress(self, epochs: int) -> Callable[[dict[str, Any]], None]:
        def show(update: dict[str, Any]) -> None:
            self._print(
                f"demo: training epoch {update['epoch']}/{epochs} "
                f"val_loss={update['val_loss']:.4f}"
            )

        return show

    def start(self, info: DemoInfo) -> None:
        self._print(
            f"demo: broker {info.bootstrap}, feed {info.input_topic} ({info.feed}), "
            f"alerts {info.alert_topic}, metrics {info.metrics_url}, "
            f"model {info.model_version} ({info.model_source})"
        )

    def update(self, snapshot: Snapshot) -> None:
        if snapshot.elapsed_s - self._last_status < _PLAIN_EVERY_S:
            return
        self._last_status = snapshot.elapsed_s
        s = snapshot.service or ServiceNumbers()
        self._print(
            f"[{snapshot.elapsed_s:5.0f}s] events/s={snapshot.events_per_s:.0f} "
            f"consumed={s.events_in} lag={s.lag} keys={s.keys} open_episodes={s.open_episodes} "
            f"alerts={s.alerts_opened} {_score_line(snapshot.score)}"
        )

    def alert(self, line: AlertLine) -> None:
        data = line.data
        self._print(
            f"alert {data['kind']} {data['key']} {data['severity']} "
            f"score={data['score']:.3g}/{data['threshold']:.3g} "
            f"top=[{_top_features(data)}] injected={line.matched or 'none'}"
        )

    def finish(self, summary: dict[str, Any]) -> None:
        self._print(orjson.dumps({"summary": summary}).decode())

    def close(self) -> None:
        """Nothing stays open between lines."""


class RichView:
    """A live terminal view, redrawn a few times a second."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._live: Live | None = None
        self._info: DemoInfo | None = None
        self._progress: Progress | None = None

    def phase(self, text: str) -> None:
        self.console.print(f"[bold cyan]demo[/] {text}")

    def training_progress(self, epochs: int) -> Callable[[dict[str, Any]], None]:
        progress = Progress(
            TextColumn("training on the warm-up stretch"),
            BarColumn(),
            TextColumn("epoch {task.completed}/{task.total}  {task.fields[loss]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        task = progress.add_task("train", total=epochs, loss="")
        progress.start()
        self._progress = progress

        def show(update: dict[str, Any]) -> None:
            total = update.get("epochs", epochs)
            progress.update(
                task, completed=update["epoch"], total=total, loss=f"val {update['val_loss']:.4f}"
            )

        return show

    def start(self, info: DemoInfo) -> None:
        if self._progress is not None:
            self._progress.stop()  # the bar stays on screen, at the epoch training stopped
            self._progress = None
        self._info = info
        self._live = Live(
            Text("waiting for the first numbers..."),
            console=self.console,
            refresh_per_second=4,
            redirect_stderr=True,
            vertical_overflow="crop",
        )
        self._live.start()

    def update(self, snapshot: Snapshot) -> None:
        if self._live is not None and self._info is not None:
            self._live.update(render(self._info, snapshot))

    def alert(self, line: AlertLine) -> None:
        """Alerts are shown in the snapshot's table."""

    def finish(self, summary: dict[str, Any]) -> None:
        self.close()
        self.console.print(render_summary(summary))

    def close(self) -> None:
        """Hand the terminal back (also on the way out after an error or a Ctrl-C)."""
        for display in (self._progress, self._live):
            if display is not None:
                display.stop()
        self._progress = self._live = None


def render(info: DemoInfo, snap: Snapshot) -> Group:
    """The whole live screen for one snapshot."""
    until = f" / {info.duration_s:.0f}s" if info.duration_s else ""
    header = Text.assemble(
        ("stream-detector demo", "bold"),
        f"  {snap.elapsed_s:.0f}s{until}  ·  {info.feed}"
        "  ·  Ctrl-C to stop\n",
        (
            f"broker {info.bootstrap}  ·  metrics {info.metrics_url}  ·  "
            f"model {info.model_version} ({info.model_source})",
            "dim",
        ),
    )
    return Group(
        header,
        _columns(_service_panel(snap), _score_panel(snap.score)),
        _alerts_panel(snap.recent),
    )


def _columns(*panels: Panel) -> Table:
    grid = Table.grid(expand=True, padding=(0, 1))
    for _ in panels:
        grid.add_column(ratio=1)
    grid.add_row(*panels)
    return grid


def _pairs(rows: Sequence[tuple[str, str]]) -> Table:
    table = Table.grid(padding=(0, 2), expand=True)
    table.add_column(style="dim", no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    for name, value in rows:
        table.add_row(name, value)
    return table


def _service_panel(snap: Snapshot) -> Panel:
    s = snap.service
    if s is None:
        return Panel("waiting for the service...", title="service")
    rows = [
        ("events/s", f"{snap.events_per_s:,.0f}"),
        ("produced", f"{snap.produced:,}"),
        ("consumed", f"{s.events_in:,}"),
        ("consumer lag", f"{s.lag:,}"),
        ("keys", f"{s.keys:,}"),
        ("windows scored", f"{s.windows_scored:,}"),
        ("open episodes", f"{s.open_episodes:,}"),
        ("alerts opened", f"{s.alerts_opened:,}"),
        ("alerts resolved", f"{s.alerts_resolved:,}"),
        ("dead letters", f"{s.dead_letters:,}"),
    ]
    return Panel(_pairs(rows), title="service")


def _score_panel(score: Score) -> Panel:
    rows = [
        ("injected", str(score.injected)),
        ("detected", str(score.detected)),
        ("in progress", str(score.pending)),
        ("alert episodes", str(score.episodes)),
        ("false positives", str(score.false_positives)),
        ("precision", _ratio(score.precision)),
        ("recall", _ratio(score.recall)),
    ]
    rows += [(f"  {kind}", f"{d}/{n}") for kind, (d, n) in score.by_kind.items()]
    return Panel(_pairs(rows), title="injected vs detected")


def _alerts_panel(recent: Sequence[AlertLine]) -> Panel:
    """Two lines per alert, newest first: the facts, then what the model says was off; narrow
    terminals keep every column readable that way."""
    lines = Text()
    for line in reversed(recent):
        data = line.data
        severity = data["severity"]
        ratio = data["score"] / data["threshold"] if data["threshold"] > 0 else float("inf")
        lines.append(f"{_clock(data['window_end'])}  {data['key']:<12} ")
        style = _SEVERITY_STYLE.get(severity, "")
        lines.append(f"{data['kind'] + ' ' + severity:<16}", style=style)
        lines.append(f"{ratio:5.1f}x thr  ")
        if line.matched:
            lines.append(line.matched, style="green")
        else:
            lines.append("false positive", style="red")
        # Two features keep the line within an 80-column terminal.
        lines.append(f"\n          {_top_features(data, 2)}\n", style="dim")
    lines.rstrip()
    return Panel(lines if lines.plain else Text("none yet"), title="latest alerts (event time)")


def render_summary(summary: dict[str, Any]) -> Panel:
    rows = [
        ("ran for", f"{summary['elapsed_s']:.0f}s"),
        ("events produced / processed", f"{summary['events_produced']:,} / "
         f"{summary['events_processed']:,}"),
        ("alerts opened / resolved", f"{summary['alerts_opened']} / {summary['alerts_resolved']}"),
        ("anomalies injected (seen in full)", str(summary["injected"])),
        ("detected / missed", f"{summary['detected']} / {summary['missed']}"),
        ("false positive episodes", str(summary["false_positives"])),
        ("precision", _ratio(summary["precision"])),
        ("recall", _ratio(summary["recall"])),
    ]
    return Panel(_pairs(rows), title="demo summary", expand=False)


def wants_live_view(ui: bool | None) -> bool:
    """The live view on a terminal unless told otherwise (--ui / --no-ui); plain lines elsewhere."""
    return sys.stdout.isatty() if ui is None else ui


def make_view(interactive: bool) -> DemoView:
    return RichView() if interactive else PlainView()
