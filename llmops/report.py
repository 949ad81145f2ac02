"""The demo's report: one self-contained HTML page with a timeline plot (PNG) of the whole story.

The timeline puts on one time axis what a platform team looks at during an incident: request rate, p95 latency,
serving nodes, the model version(s) serving, the alerts that fired and the Prefect flow runs they started. The
series come from Prometheus (`query_range`) and the Prefect API; the page adds the eval table of each gate, the
canary steps and the spend against the budget. The PNG is embedded (data URI), so the page opens anywhere: from
the state dir, as an MLflow artifact, or linked from the Prefect artifact.

Collection (`collect_timeline`) talks to the stack through two callables, so the rendering is tested on fixed
series and the demo runs it on the real stack.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Prometheus range query: (promql, start, end, step) -> [(labels, [(t, value), ...]), ...]
RangeQuery = Callable[[str, float, float, float], list[tuple[dict[str, str], list[tuple[float, float]]]]]


@dataclass
class Stage:
    name: str
    started_at: float  # epoch seconds
    seconds: float = 0.0
    ok: bool = True
    lines: list[str] = field(default_factory=list)  # what the terminal showed, for the page
    links: list[tuple[str, str]] = field(default_factory=list)  # (label, url)


@dataclass
class Span:
    """Something that lasted (an alert firing, a flow run): drawn as a bar on the timeline."""

    label: str
    start: float
    end: float
    kind: str  # "alert" | "flow"
    state: str = ""


@dataclass
class Timeline:
    t0: float
    t1: float
    request_rate: list[tuple[float, float]] = field(default_factory=list)
    p95_s: list[tuple[float, float]] = field(default_factory=list)
    serving_nodes: list[tuple[float, float]] = field(default_factory=list)
    versions: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # version -> nodes serving it
    spans: list[Span] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.request_rate or self.p95_s or self.serving_nodes or self.versions or self.spans)


@dataclass
class DemoReport:
    title: str
    model: str
    started_at: float
    stages: list[Stage] = field(default_factory=list)
    gates: list[dict[str, Any]] = field(default_factory=list)  # {title, verdict, rows: [{metric, champion, ...}]}
    rollouts: list[dict[str, Any]] = field(default_factory=list)  # {title, rows: [{step, verdict, seconds, why}]}
    cost: dict[str, float | None] = field(default_factory=dict)  # spent, budget_per_hour, hours, budget_spent
    failure: str | None = None
    links: list[tuple[str, str]] = field(default_factory=list)
    overhead: dict[str, float] = field(default_factory=dict)  # where the time went (demo_report.orchestration_split)
    nodes_start_s: float = 0.0  # of the stack-up stage, the serving nodes' start (serving, not orchestration)

    @property
    def ok(self) -> bool:
        return self.failure is None and all(s.ok for s in self.stages)


def _spans_from_series(points: list[tuple[float, float]], step: float) -> list[tuple[float, float]]:
    """Runs of consecutive samples (gaps over 1.5 steps split them)."""
    runs: list[list[float]] = []
    for t, _ in sorted(points):
        if runs and t - runs[-1][1] <= 1.5 * step:
            runs[-1][1] = t
        else:
            runs.append([t, t])
    return [(a, b + step) for a, b in runs]


def collect_timeline(query: RangeQuery, flow_runs: Sequence[dict[str, Any]], model: str, t0: float, t1: float,
                     step: float = 2.0) -> Timeline:
    """The pool's series between t0 and t1 from Prometheus, and the flow runs that overlap it."""
    sel = f'{{model="{model}"}}'

    def one(expr: str) -> list[tuple[float, float]]:
        res = query(expr, t0, t1, step)
        return [(t, v) for t, v in res[0][1] if not math.isnan(v)] if res else []

    tl = Timeline(t0, t1, request_rate=one(f"llmops:pool_requests:rate10s{sel}"),
                  p95_s=one(f"llmops:pool_latency_p95:10s{sel}"),
                  serving_nodes=one(f'llmops_pool_nodes{{model="{model}",role="serving"}}')
                  or one(f"llmops:pool_nodes_up{sel}"))
    for labels, values in query(f"count by (version) (llmops_node_model_info{sel})", t0, t1, step):
        tl.versions[labels.get("version", "?")] = values
    for labels, values in query(f'ALERTS{{alertstate="firing",pool="{model}"}}', t0, t1, step):
        for a, b in _spans_from_series(values, step):
            tl.spans.append(Span(labels.get("alertname", "?"), a, b, "alert"))
    for r in flow_runs:
        start, end = timestamp(r.get("start_time")), timestamp(r.get("end_time")) or t1
        if start is None or end < t0 or start > t1:
            continue
        state = str((r.get("state") or {}).get("type", ""))
        label = str(r.get("flow_name") or r.get("name") or "run")
        tl.spans.append(Span(label, start, end, "flow", state))
    return tl


def timestamp(v: object) -> float | None:
    """Epoch seconds of an API time (ISO 8601, `Z` or an offset) or a number; None for none."""
    if not v:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    return datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()


def plot_timeline(tl: Timeline, title: str = "") -> bytes:
    """The PNG: request rate, p95 latency, serving nodes, versions, then alerts and flow runs as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rel(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
        """Seconds since t0 and values; a gap in the samples (no data: no requests, say) breaks the line."""
        xs: list[float] = []
        ys: list[float] = []
        for i, (t, v) in enumerate(points):
            if i and t - points[i - 1][0] > 3 * 2.0:
                xs.append(points[i - 1][0] - tl.t0 + 2.0)
                ys.append(float("nan"))
            xs.append(t - tl.t0)
            ys.append(v)
        return xs, ys

    bars = sorted({(s.kind, s.label) for s in tl.spans})
    fig, axes = plt.subplots(5, 1, figsize=(11, 10), sharex=True,
                             gridspec_kw={"height_ratios": [2, 2, 1.4, 1.4, max(1.5, 0.35 * len(bars))]})
    axes[0].plot(*rel(tl.request_rate), color="tab:blue")
    axes[0].set_ylabel("requests/s")
    axes[1].plot(*rel(tl.p95_s), color="tab:orange")
    axes[1].set_ylabel("node p95 s")  # at the nodes: time queued in HAProxy is not in it
    axes[2].step(*rel(tl.serving_nodes), where="post", color="tab:green")
    axes[2].set_ylabel("serving nodes")
    axes[2].set_ylim(bottom=0)
    for version, points in sorted(tl.versions.items(), key=lambda kv: kv[0]):
        axes[3].step(*rel(points), where="post", label=f"v{version}")
    axes[3].set_ylabel("nodes by version")
    axes[3].set_ylim(bottom=0)
    if tl.versions:
        axes[3].legend(loc="upper left", fontsize=8, ncol=min(len(tl.versions), 6))
    colours = {"alert": "tab:red", "flow": "tab:purple"}
    for i, (kind, label) in enumerate(bars):
        for s in tl.spans:
            if (s.kind, s.label) == (kind, label):
                failed = s.state in ("FAILED", "CRASHED")
                axes[4].barh(i, s.end - s.start, left=s.start - tl.t0, height=0.6,
                             color="black" if failed else colours.get(kind, "grey"), alpha=0.8)
    axes[4].set_yticks(range(len(bars)), [f"{'alert' if k == 'alert' else 'flow'}: {lbl}" for k, lbl in bars],
                       fontsize=8)
    axes[4].set_xlabel("seconds since the demo started")
    axes[4].set_xlim(0, max(tl.t1 - tl.t0, 1.0))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:14px}
th{background:#f3f3f3}.ok{color:#17813a}.bad{color:#b00020}pre{background:#f7f7f7;padding:8px;font-size:12px;
white-space:pre-wrap}img{max-width:100%;border:1px solid #ddd}"""


def render_html(report: DemoReport, png: bytes | None) -> str:
    """The page; the plot is embedded so that the file stands alone."""
    when = datetime.fromtimestamp(report.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    verdict = ("<span class='ok'>completed</span>" if report.ok
               else f"<span class='bad'>stopped: {html.escape(report.failure or 'a stage failed')}</span>")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{html.escape(report.title)}</h1>",
             f"<p>model <code>{html.escape(report.model)}</code>, started {when}: {verdict}</p>"]
    if png:
        b64 = base64.b64encode(png).decode()
        parts.append("<h2>Timeline</h2><img id='timeline' alt='timeline: request rate, p95 latency, serving nodes, "
                     "versions, alerts and flow runs' src='data:image/png;base64," + b64 + "' "
                     "onload=\"this.dataset.rendered=this.naturalWidth+'x'+this.naturalHeight\">")
    else:
        parts.append("<h2>Timeline</h2><p><em>no series were recorded</em></p>")
    rows = [{"stage": s.name, "seconds": round(s.seconds, 1), "result": "ok" if s.ok else "FAILED"}
            for s in report.stages]
    parts.append("<h2>Stages</h2>" + _table(rows))
    for s in report.stages:
        links = " ".join(f"<a href='{html.escape(u, quote=True)}'>{html.escape(lbl)}</a>" for lbl, u in s.links)
        parts.append(f"<h3>{html.escape(s.name)}</h3>" + (f"<p>{links}</p>" if links else "")
                     + (f"<pre>{html.escape(chr(10).join(s.lines))}</pre>" if s.lines else ""))
    parts.append("<h2>Gates</h2>")
    for g in report.gates or [{"title": "no gate ran", "verdict": "", "rows": []}]:
        parts.append(f"<h3>{html.escape(str(g['title']))}: {html.escape(str(g.get('verdict', '')))}</h3>"
                     + _table(g["rows"]))
    parts.append("<h2>Rollouts</h2>")
    for r in report.rollouts or [{"title": "no rollout ran", "rows": []}]:
        parts.append(f"<h3>{html.escape(str(r['title']))}</h3>" + _table(r["rows"]))
    parts.append("<h2>Cost</h2>" + _table([{k: v for k, v in report.cost.items()}] if report.cost else []))
    if report.overhead:
        parts.append("<h2>Where the time went</h2><p>overhead = the stack's services and the model's registration "
                     "(its serving nodes' start counts as serving) + the wait to start of the flow runs the story "
                     "waited on + their time outside training, evaluation and serving tasks (a subflow counted "
                     "once, inside its parent). The scale, reconcile and recorded-trigger runs beside the story are "
                     "the background_* columns, not in the share.</p>"
                     + _table([dict(report.overhead)]))
    if report.links:
        parts.append("<h2>Links</h2><ul>" + "".join(f"<li><a href='{html.escape(u, quote=True)}'>"
                                                    f"{html.escape(lbl)}</a></li>" for lbl, u in report.links)
                     + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def gate_rows(metrics: dict[str, float]) -> list[dict[str, Any]]:
    """`eval/<who>/<metric>` run metrics (tasks/evaluate.py) as one row per metric: champion, challenger, delta."""
    by: dict[str, dict[str, float]] = {}
    for key, v in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "eval":
            by.setdefault(parts[2], {})[parts[1]] = v
    rows = []
    for metric in sorted(by):
        ch, cand = by[metric].get("champion"), by[metric].get("challenger")
        rows.append({"metric": metric, "champion": ch, "challenger": cand,
                     "delta": (cand - ch) if ch is not None and cand is not None else None})
    return rows


def markdown_summary(report: DemoReport, html_url: str) -> str:
    """The Prefect artifact: the stages and where the full page is."""
    lines = [f"# {report.title}", "", f"Result: {'completed' if report.ok else 'stopped: ' + (report.failure or '')}",
             "", "| stage | seconds | result |", "| --- | --- | --- |"]
    lines += [f"| {s.name} | {s.seconds:.1f} | {'ok' if s.ok else 'FAILED'} |" for s in report.stages]
    lines += ["", f"Full report with the timeline plot, gate tables, rollout steps and cost: [{html_url}]({html_url})"]
    return "\n".join(lines)
