"""One canary rollout: start the candidate beside the champion, ramp its traffic share step by step,
judge each step from Prometheus and the quality probe, then promote it or roll it back.

The orchestration talks to the world through small interfaces (pool, registry, metrics, probe, clock) so
it runs against the real stack in integration tests and against fakes in unit tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from llmops.errors import LlmopsError
from llmops.metrics import MetricsSource, version_traffic
from llmops.pool.state import NodeRecord
from llmops.probe import ProbeResult
from llmops.registry import ModelVersionRef
from llmops.rollout import CanaryObservation, CanaryPolicy, Verdict, judge_canary, split_weights

Say = Callable[[str], None]


class CanaryPool(Protocol):
    model: str

    def nodes(self) -> list[NodeRecord]: ...

    def reconcile(self) -> object: ...

    def add_node(self, version_or_alias: str, engine: str = ..., weight: int = ..., standby: bool = ...
                 ) -> NodeRecord: ...

    def set_weight(self, name: str, weight: int) -> None: ...

    def remove_node(self, name: str, drain_timeout_s: float = ...) -> None: ...


class AliasRegistry(Protocol):
    def resolve(self, name: str, version_or_alias: str) -> ModelVersionRef: ...

    def set_alias(self, name: str, alias: str, version: str) -> None: ...

    def tag_version(self, name: str, version: str, key: str, value: str) -> None: ...


@dataclass
class StepRecord:
    share: int
    verdict: str
    seconds: float
    reasons: tuple[str, ...]
    observation: CanaryObservation | None


@dataclass
class TimelinePoint:
    t_s: float
    share: int
    canary_requests: float
    canary_error_ratio: float
    canary_p95_s: float | None
    baseline_p95_s: float | None


@dataclass
class RolloutReport:
    model: str
    candidate: str
    baseline: str
    promoted: bool
    reason: str
    steps: list[StepRecord] = field(default_factory=list)
    timeline: list[TimelinePoint] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class CanaryRollout:
    pool: CanaryPool
    registry: AliasRegistry
    metrics: MetricsSource
    probe: Callable[[NodeRecord], ProbeResult]
    policy: CanaryPolicy
    engine: str = "transformers"
    poll_s: float = 2.0
    say: Say = print
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _quality: ProbeResult | None = field(default=None, init=False, repr=False)

    def run(self, version_or_alias: str) -> RolloutReport:
        """Roll `version_or_alias` out; returns the report (promoted or not, and why)."""
        t0 = self.clock()
        cand = self.registry.resolve(self.pool.model, version_or_alias)  # unknown: raises before anything starts
        champion = self.registry.resolve(self.pool.model, "champion")
        self.pool.reconcile()  # act on what really serves, not on what a crashed flow left recorded
        # warm standby nodes (weight 0, promoted by scale-out) take no canary traffic: they are not the baseline;
        # after a promotion they are replaced by standby nodes of the new champion
        baseline = [n for n in self.pool.nodes() if n.version != cand.version and not n.standby]
        report = RolloutReport(self.pool.model, cand.version, champion.version, False, "")
        if not baseline:
            raise LlmopsError(f"every node of {self.pool.model} already serves v{cand.version}",
                              "nothing to roll out: it already serves everywhere (to go back, `llmops rollback`)")
        try:
            canary = self.pool.add_node(cand.version, engine=self.engine, weight=0)
        except LlmopsError as err:  # the pre-registration serving test: no user traffic reached it
            return self._rolled_back(report, None, f"canary failed its serving test: {err.problem}", t0)
        self.say(f"canary {canary.name} v{cand.version} joined at weight 0 beside {len(baseline)} node(s)")
        # The quality probe runs before any user traffic: a garbage version never answers a user, and the probe
        # warms the fresh node up (its first requests are slow; probe traffic is excluded from the latency
        # compared at each step).
        first = self.probe(canary)
        if first.score < self.policy.min_quality:
            return self._rolled_back(report, canary, f"quality probe before traffic: {first.score:.3f} < "
                                                     f"{self.policy.min_quality}", t0)
        self._quality = first
        for share in self.policy.steps:
            self.pool.reconcile()
            alive = {n.name for n in self.pool.nodes()}
            if canary.name not in alive:
                return self._rolled_back(report, None, f"canary node {canary.name} died before the {share}% step",
                                         t0)
            baseline = [n for n in baseline if n.name in alive]
            if not baseline:
                return self._rolled_back(report, canary, "no champion node left to compare with (all died)", t0)
            step = self._step(canary, baseline, share, report, t0)
            report.steps.append(step)
            self.say(f"step {share}%: {step.verdict} ({'; '.join(step.reasons)})")
            if step.verdict != Verdict.PASS.value:
                return self._rolled_back(report, canary, f"step {share}%: {'; '.join(step.reasons)}", t0)
        self.registry.set_alias(self.pool.model, "champion", cand.version)
        self.registry.tag_version(self.pool.model, cand.version, "rollout", "promoted")
        self.registry.tag_version(self.pool.model, cand.version, "rollout_reason", "all steps passed")
        if champion.version != cand.version:  # what `llmops rollback` rolls back to
            self.registry.tag_version(self.pool.model, cand.version, "previous_champion", champion.version)
        for node in baseline:  # drained (weight 0 already, wait for zero in flight) and stopped
            self.pool.remove_node(node.name)
        old_standby = [n for n in self.pool.nodes() if n.standby and n.version != cand.version]
        for node in old_standby:  # a standby promoted later must serve the champion too
            self.pool.remove_node(node.name)
        # keep the pool's size, every node on the new champion: the replacements start side by side (their loads
        # and health checks overlap), serving ones at full weight, the standby at 0
        self._start_all([False] * (len(baseline) - 1) + [True] * len(old_standby), cand.version)
        report.promoted, report.reason, report.seconds = True, "all steps passed", self.clock() - t0
        return report

    def _start_all(self, standby: list[bool], version: str) -> None:
        """Start one node of `version` per entry (a standby at weight 0 where True) at once; the first failure
        raises after every start has finished."""
        from concurrent.futures import ThreadPoolExecutor

        if not standby:
            return
        with ThreadPoolExecutor(max_workers=len(standby)) as ex:
            futures = [ex.submit(self.pool.add_node, version, engine=self.engine, weight=0 if s else 100, standby=s)
                       for s in standby]
        for f in futures:
            f.result()

    def _step(self, canary: NodeRecord, baseline: list[NodeRecord], share: int, report: RolloutReport,
              t0: float) -> StepRecord:
        c_w, b_w = split_weights(share, len(baseline))
        self.pool.set_weight(canary.name, c_w)
        for node in baseline:
            self.pool.set_weight(node.name, b_w)
        start = self.clock()
        probe: ProbeResult | None = self._quality
        while True:
            self.sleep(self.poll_s)
            waited = self.clock() - start
            window = max(2, int(waited) + 1)
            c_req, c_err, c_p95 = version_traffic(self.metrics, self.pool.model, canary.version, window, canary.engine)
            b_req, b_err, b_p95 = version_traffic(self.metrics, self.pool.model, baseline[0].version, window,
                                                  baseline[0].engine)
            if probe is None and c_req >= self.policy.min_requests / 2:
                probe = self.probe(canary)
            obs = CanaryObservation(waited, c_req, c_err, c_p95, b_req, b_err, b_p95,
                                    None if probe is None else probe.score)
            report.timeline.append(TimelinePoint(self.clock() - t0, share, c_req, c_err / c_req if c_req else 0.0,
                                                 c_p95, b_p95))
            verdict = judge_canary(obs, self.policy)
            if verdict.verdict is not Verdict.WAIT:
                return StepRecord(share, verdict.verdict.value, waited, verdict.reasons, obs)

    def _rolled_back(self, report: RolloutReport, canary: NodeRecord | None, reason: str, t0: float
                     ) -> RolloutReport:
        if canary is not None and any(n.name == canary.name for n in self.pool.nodes()):
            self.pool.set_weight(canary.name, 0)
            self.pool.remove_node(canary.name)
        for node in self.pool.nodes():  # the champion's nodes take all traffic again (also after a dead canary)
            if node.weight != 100:
                self.pool.set_weight(node.name, 100)
        self.registry.tag_version(self.pool.model, report.candidate, "rollout", "rolled_back")
        self.registry.tag_version(self.pool.model, report.candidate, "rollout_reason", reason[:500])
        report.promoted, report.reason, report.seconds = False, reason, self.clock() - t0
        self.say(f"rolled back v{report.candidate}: {reason}")
        return report
