"""One canary rollout: start the candidate beside the champion, ramp its traffic share step by step,
judge each step from Prometheus and the quality probe, then promote it or roll it back.

The orchestration talks to the world through small interfaces (pool, registry, metrics, probe, clock) so
it runs against the real stack in integration tests and against fakes in unit tests.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from llmops.errors import LlmopsError
from llmops.metrics import MetricsSource, version_traffic
from llmops.parallel import all_or_first_error, side_by_side
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
    # the most nodes (serving, standby and the canary) the pool may run at once (max_replicas + warm_standby and
    # what the budget pays); the new champion's replacements start with the canary where they fit under it (a
    # rolling update's surge), else after the promotion. None: always after the promotion
    max_nodes: int | None = None
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
        surge = _Surge()
        self._start_surge(surge, baseline, cand.version)
        try:
            canary = self.pool.add_node(cand.version, engine=self.engine, weight=0)
        except LlmopsError as err:  # the pre-registration serving test: no user traffic reached it
            return self._rolled_back(report, None, f"canary failed its serving test: {err.problem}", t0, surge)
        self.say(f"canary {canary.name} v{cand.version} joined at weight 0 beside {len(baseline)} node(s)")
        # The quality probe runs before any user traffic: a garbage version never answers a user, and the probe
        # warms the fresh node up (its first requests are slow; probe traffic is excluded from the latency
        # compared at each step).
        first = self.probe(canary)
        if first.score < self.policy.min_quality:
            return self._rolled_back(report, canary, f"quality probe before traffic: {first.score:.3f} < "
                                                     f"{self.policy.min_quality}", t0, surge)
        self._quality = first
        surge.wait(self.say)  # no step is judged while nodes load beside it (on shared cores that skews latency)
        for share in self.policy.steps:
            self.pool.reconcile()
            alive = {n.name for n in self.pool.nodes()}
            if canary.name not in alive:
                return self._rolled_back(report, None, f"canary node {canary.name} died before the {share}% step",
                                         t0, surge)
            baseline = [n for n in baseline if n.name in alive]
            if not baseline:
                return self._rolled_back(report, canary, "no champion node left to compare with (all died)", t0,
                                         surge)
            step = self._step(canary, baseline, share, report, t0)
            report.steps.append(step)
            self.say(f"step {share}%: {step.verdict} ({'; '.join(step.reasons)})")
            if step.verdict != Verdict.PASS.value:
                return self._rolled_back(report, canary, f"step {share}%: {'; '.join(step.reasons)}", t0, surge)
        self.registry.set_alias(self.pool.model, "champion", cand.version)
        self.registry.tag_version(self.pool.model, cand.version, "rollout", "promoted")
        self.registry.tag_version(self.pool.model, cand.version, "rollout_reason", "all steps passed")
        if champion.version != cand.version:  # what `llmops rollback` rolls back to
            self.registry.tag_version(self.pool.model, cand.version, "previous_champion", champion.version)
        # the canary goes back to the pool's normal weight (the last step gave it the maximum, 256: beside the
        # replacements at 100 it would keep most of the traffic), and the replacements started with the canary take
        # traffic before the baseline leaves
        self.pool.set_weight(canary.name, 100)
        ready = surge.wait(self.say)
        for node in ready:
            if not node.standby:
                self.pool.set_weight(node.name, 100)
        for node in baseline:  # drained (weight 0 already, wait for zero in flight) and stopped
            self.pool.remove_node(node.name)
        old_standby = [n for n in self.pool.nodes() if n.standby and n.version != cand.version]
        for node in old_standby:  # a standby promoted later must serve the champion too
            self.pool.remove_node(node.name)
        # keep the pool's size, every node on the new champion: what did not start with the canary starts now,
        # side by side (loads and health checks overlap), serving ones at full weight, the standby at 0
        serve = len(baseline) - 1 - sum(1 for n in ready if not n.standby)
        standby = len(old_standby) + len(surge.standby_removed) - sum(1 for n in ready if n.standby)
        self._start_all([False] * max(serve, 0) + [True] * max(standby, 0), cand.version)
        report.promoted, report.reason, report.seconds = True, "all steps passed", self.clock() - t0
        return report

    def _start_surge(self, surge: _Surge, baseline: list[NodeRecord], version: str) -> None:
        """Start the new champion's replacements (serving ones at weight 0 until the promotion, the standby as
        standby) in the background beside the canary, as many as fit under `max_nodes` with it, serving ones
        first. The old standby nodes go first: nothing can promote them while the rollout holds the pool."""
        if self.max_nodes is None:
            return
        nodes = self.pool.nodes()
        old_standby = [n for n in nodes if n.standby and n.version != version]
        room = self.max_nodes - (len(nodes) - len(old_standby)) - 1  # the canary
        serve = min(len(baseline) - 1, max(room, 0))
        standby = min(len(old_standby), max(room - serve, 0))
        if serve + standby == 0:
            return
        for node in old_standby:
            self.pool.remove_node(node.name)
            surge.standby_removed.append(node)
        self.say(f"starting {serve} serving and {standby} standby node(s) of v{version} beside the canary, at "
                 "weight 0 until the promotion")
        surge.start(self._starts([False] * serve + [True] * standby, version, serving_weight=0))

    def _start_all(self, standby: list[bool], version: str) -> None:
        """Start one node of `version` per entry (a standby at weight 0 where True) at once; the first failure
        raises after every start has finished."""
        all_or_first_error(self._starts(standby, version, serving_weight=100))

    def _starts(self, standby: list[bool], version: str, serving_weight: int) -> list[Callable[[], NodeRecord]]:
        """One node start of `version` per entry: a standby (weight 0) where True, else serving at `serving_weight`."""
        return [functools.partial(self.pool.add_node, version, engine=self.engine,
                                  weight=0 if s else serving_weight, standby=s) for s in standby]

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

    def _rolled_back(self, report: RolloutReport, canary: NodeRecord | None, reason: str, t0: float,
                     surge: _Surge | None = None) -> RolloutReport:
        if canary is not None and any(n.name == canary.name for n in self.pool.nodes()):
            self.pool.set_weight(canary.name, 0)
            self.pool.remove_node(canary.name)
        if surge is not None:  # the replacements started with the canary go; the champion's standby returns
            for node in surge.wait(self.say):
                self.pool.remove_node(node.name)
            if surge.standby_removed:
                self._start_all([True] * len(surge.standby_removed), report.baseline)
        for node in self.pool.nodes():  # the champion's nodes take all traffic again (also after a dead canary)
            if node.weight != 100 and not node.standby:
                self.pool.set_weight(node.name, 100)
        self.registry.tag_version(self.pool.model, report.candidate, "rollout", "rolled_back")
        self.registry.tag_version(self.pool.model, report.candidate, "rollout_reason", reason[:500])
        report.promoted, report.reason, report.seconds = False, reason, self.clock() - t0
        self.say(f"rolled back v{report.candidate}: {reason}")
        return report


@dataclass
class _Surge:
    """Replacements started in the background beside the canary, and the old standby nodes removed for them."""

    standby_removed: list[NodeRecord] = field(default_factory=list)
    ready: list[NodeRecord] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _results: list[NodeRecord | BaseException] = field(default_factory=list)

    def start(self, starts: Sequence[Callable[[], NodeRecord]]) -> None:
        self._thread = threading.Thread(target=lambda: self._results.extend(side_by_side(starts)), daemon=True)
        self._thread.start()

    def wait(self, say: Say) -> list[NodeRecord]:
        """The nodes that started (once every start finished); a failed start is said and left to the caller."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            for r in self._results:
                if isinstance(r, BaseException):
                    say(f"a replacement started beside the canary failed: {r}")
            self.ready = [r for r in self._results if isinstance(r, NodeRecord)]
        return self.ready
