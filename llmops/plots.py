"""PNG plots for reports (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from llmops.canary import RolloutReport


def plot_rollout(report: RolloutReport, out: Path) -> Path:
    """Traffic share, canary error ratio and p95 latency (canary vs champion) over the rollout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [p.t_s for p in report.timeline]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    axes[0].step(t, [p.share for p in report.timeline], where="post", color="tab:blue")
    axes[0].set_ylabel("canary share %")
    axes[0].set_ylim(0, 105)
    axes[1].plot(t, [p.canary_error_ratio for p in report.timeline], color="tab:red")
    axes[1].set_ylabel("canary error ratio")
    axes[2].plot(t, [p.canary_p95_s if p.canary_p95_s is not None else float("nan") for p in report.timeline],
                 label=f"canary v{report.candidate}", color="tab:orange")
    axes[2].plot(t, [p.baseline_p95_s if p.baseline_p95_s is not None else float("nan") for p in report.timeline],
                 label=f"champion v{report.baseline}", color="tab:green")
    axes[2].set_ylabel("p95 latency s")
    axes[2].set_xlabel("seconds since rollout start")
    axes[2].legend(loc="upper left")
    verdict = "promoted" if report.promoted else "rolled back"
    fig.suptitle(f"{report.model}: v{report.candidate} {verdict}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
