"""The demo report: timeline collection from range queries, the plot, the page, and the page in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from llmops.report import DemoReport, Stage, collect_timeline, gate_rows, plot_timeline, render_html

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z (RUNS are given in ISO time)


def fake_query(expr: str, start: float, end: float, step: float) -> list[tuple[dict[str, str],
                                                                              list[tuple[float, float]]]]:
    ts = [start + i * step for i in range(int((end - start) / step) + 1)]
    if expr.startswith("llmops:pool_requests"):
        return [({}, [(t, 1.0 if t - start < 60 else 8.0) for t in ts])]
    if expr.startswith("llmops:pool_latency_p95"):
        return [({}, [(t, 0.5 if t - start < 60 else 3.0) for t in ts])]
    if expr.startswith("llmops_pool_nodes"):
        return [({}, [(t, 2.0 if t - start < 80 else 4.0) for t in ts])]
    if expr.startswith("count by (version)"):
        return [({"version": "1"}, [(t, 2.0) for t in ts if t - start < 100]),
                ({"version": "2"}, [(t, 2.0 if t - start < 120 else 4.0) for t in ts if t - start >= 100])]
    if expr.startswith("ALERTS"):
        return [({"alertname": "Backlog"}, [(t, 1.0) for t in ts if 64 <= t - start <= 80])]
    return []


RUNS = [{"flow_name": "scale", "start_time": "2027-01-15T08:01:10+00:00", "end_time": "2027-01-15T08:01:40+00:00",
         "state": {"type": "COMPLETED"}},
        {"flow_name": "repair", "start_time": None, "end_time": None, "state": {"type": "SCHEDULED"}}]


def test_collect_timeline_reads_every_series_and_the_runs_that_overlap() -> None:
    t0 = T0
    tl = collect_timeline(fake_query, RUNS, "m", t0, t0 + 180, step=2.0)
    assert max(v for _, v in tl.request_rate) == 8.0 and max(v for _, v in tl.serving_nodes) == 4.0
    assert set(tl.versions) == {"1", "2"}
    alert = next(s for s in tl.spans if s.kind == "alert")
    assert alert.label == "Backlog" and 64 <= alert.start - t0 <= 66 and 80 <= alert.end - t0 <= 84
    flows = [s for s in tl.spans if s.kind == "flow"]
    assert [(f.label, f.state, f.start - t0) for f in flows] == [("scale", "COMPLETED", 70.0)]  # unstarted run left out


def test_gate_rows_pair_champion_and_challenger_per_metric() -> None:
    rows = gate_rows({"eval/champion/exact_match": 0.5, "eval/challenger/exact_match": 0.8,
                      "eval/challenger/leakage": 0.0, "train/loss": 1.0, "eval/challenger/p/exact_match": 1.0})
    assert rows[0]["metric"] == "exact_match" and abs(rows[0]["delta"] - 0.3) < 1e-9
    assert rows[1] == {"metric": "leakage", "champion": None, "challenger": 0.0, "delta": None}
    assert len(rows) == 2  # per-policy breakdowns (4 parts) stay out of the gate table


def report_page(tmp_path: Path) -> Path:
    tl = collect_timeline(fake_query, RUNS, "m", T0, T0 + 180)
    png = plot_timeline(tl, "test")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    report = DemoReport("demo <test>", "m", 1_800_000_000.0,
                        stages=[Stage("[1/2] stack up", 1_800_000_000.0, 12.0, lines=["up in 12s"]),
                                Stage("[2/2] burst", 1_800_000_012.0, 90.0, ok=False, lines=["<b>not html</b>"])],
                        gates=[{"title": "v2 (training)", "verdict": "gate pass", "rows": gate_rows(
                            {"eval/champion/exact_match": 0.5, "eval/challenger/exact_match": 0.8})}],
                        rollouts=[{"title": "v2", "rows": [{"step": "10%", "verdict": "pass", "seconds": 20.0}]}],
                        cost={"spent": 0.12, "budget_per_hour": 6.0}, failure="[2/2] burst: pool did not grow")
    page = tmp_path / "report.html"
    page.write_text(render_html(report, png))
    return page


def test_page_escapes_text_and_names_the_failure(tmp_path: Path) -> None:
    text = report_page(tmp_path).read_text()
    assert "&lt;b&gt;not html&lt;/b&gt;" in text and "<b>not html</b>" not in text
    assert "demo &lt;test&gt;" in text and "stopped: [2/2] burst: pool did not grow" in text
    assert "data:image/png;base64," in text and "gate pass" in text and "10%" in text


def test_page_renders_in_headless_chromium_with_the_plot(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium missing: install the Debian package chromium (`make install`)"
    page = report_page(tmp_path)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the img's onload handler wrote the decoded size: the browser decoded and laid out the plot
    m = re.search(r'id="timeline"[^>]*data-rendered="(\d+)x(\d+)"', dom.stdout) or re.search(
        r'data-rendered="(\d+)x(\d+)"[^>]*id="timeline"', dom.stdout)
    assert m, "the timeline image did not load in Chromium:\n" + dom.stdout[:1500]
    assert int(m.group(1)) >= 900 and int(m.group(2)) >= 800
    shot = tmp_path / "shot.png"
    r = subprocess.run([chromium, *flags, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    from PIL import Image

    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 100, "the screenshot is blank"
    # the plot area (below the title) has many distinct grey levels (lines, text, bars), a blank page has one or two
    crop = img.crop((0, 120, 1200, 1100))
    assert len(crop.getcolors(256) or []) > 20


def test_overhead_counts_a_subflow_once_and_the_nodes_start_as_serving() -> None:
    """The repair's canary is the rollout subflow: its time is inside the repair run's, so it is not added again;
    waits are measured from due to start; the stack's node start is serving, its services are overhead."""
    from llmops.demo_report import overhead_split

    runs = [_run("train", 300, "10:00:00", "10:00:03"), _run("repair", 200, "10:10:00", "10:10:04"),
            _run("rollout", 60, "10:12:00", "10:12:00", parent="t-sub")]
    tasks = [_task("t1", "train", "fine_tune-abc", 250), _task("t2", "train", "score_model-1", 30),
             _task("t3", "repair", "fine_tune-def", 90), _task("t4", "repair", "score_model-2", 40),
             _task("t-sub", "repair", "rollout-0", 60), _task("t5", "rollout", "roll_out_canary-x", 58),
             _task("t6", "repair", "register_challenger-1", 5)]
    o = overhead_split(runs, tasks, wall_s=1000, stack_up_s=70, nodes_s=20)
    assert o["in_flows_s"] == 500 and o["work_tasks_s"] == 468  # not 560: the subflow is inside the repair run
    assert o["flow_start_waits_s"] == 7 and o["stack_up_s"] == 50 and o["nodes_start_s"] == 20
    assert o["overhead_s"] == 50 + 7 + (500 - 468) and o["overhead_share"] == 0.089
    assert o["flow_runs"] == 2 and o["background_runs"] == 0


def test_runs_beside_the_story_are_background_not_overhead() -> None:
    """Scheduled reconcile and alert-triggered scale runs the demo does not wait on are counted apart: their
    starts and their time outside work do not enter the overhead share; the foreground's do."""
    from llmops.demo_report import overhead_split

    runs = [_run("train", 300, "10:00:00", "10:00:03"), _run("rec1", 6, "10:01:00", "10:01:02"),
            _run("scale1", 20, "10:02:00", "10:02:09"), _run("dup-repair", 0.1, "10:03:00", "10:03:04")]
    tasks = [_task("t1", "train", "fine_tune-a", 290), _task("t2", "rec1", "autoscale-b", 1),
             _task("t3", "scale1", "autoscale-c", 15)]
    o = overhead_split(runs, tasks, wall_s=800, stack_up_s=40, nodes_s=10, foreground={"train"})
    assert o["flow_runs"] == 1 and o["flow_start_waits_s"] == 3 and o["work_tasks_s"] == 290
    assert o["overhead_s"] == 30 + 3 + 10
    assert o["background_runs"] == 3 and o["background_start_waits_s"] == 15
    assert abs(o["background_outside_work_s"] - (26.1 - 16)) < 0.05
    every = overhead_split(runs, tasks, wall_s=800, stack_up_s=40, nodes_s=10)
    assert abs(every["overhead_s"] - (o["overhead_s"] + 15 + 10.1)) < 0.05 and every["background_runs"] == 0


def test_stage_links_name_the_runs_the_demo_waited_on() -> None:
    from llmops.demo_report import stage_flow_runs

    rid = "df6ed754-62ad-4f66-97a7-69bc908bc65f"
    st = Stage("[3/6] train", 0.0, links=[("prefect", f"http://127.0.0.1:4200/runs/flow-run/{rid}"),
                                         ("mlflow", "http://127.0.0.1:5000/#/models/x/versions/2")])
    report = DemoReport("demo", "m", 0.0)
    report.stages.append(st)
    assert stage_flow_runs(report) == {rid}


def _run(rid: str, secs: float, due: str, start: str, parent: str | None = None) -> dict[str, object]:
    return {"id": rid, "total_run_time": secs, "expected_start_time": f"2026-11-29T{due}+00:00",
            "start_time": f"2026-11-29T{start}+00:00", "parent_task_run_id": parent}


def _task(tid: str, flow_run: str, key: str, secs: float) -> dict[str, object]:
    return {"id": tid, "flow_run_id": flow_run, "task_key": key, "total_run_time": secs}
