"""Prefill room kept free for requests with a TTFT objective while work without one fills
the engines.

Why: vLLM (v1 scheduler, and the simulator that follows it) gives each step's token budget to
its running sequences first and admits waiting ones with what is left; `--scheduling-policy
priority` orders only the waiting queue (and picks preemption victims). A batch prompt whose
prefill has started therefore keeps its chunks ahead of any request that arrives after it,
whatever that request's priority. On prefill-heavy traffic (long prompts) a few batch
prompts sent at once fill whole steps of the budget, each step lasting a large part of a
tight TTFT objective: an interactive request that arrives then waits for those steps in the
engine, where no policy can reorder it. The adaptive limit's own gate (`prefill_fits`)
tolerates a few engine *steps* of queued prefill, and on such traffic a step is itself long.

What: while requests with a TTFT objective are arriving, a request without an objective is
sent to an instance only if, after it, the requests with the tightest objective seen that
are expected there within one objective (`expected_tokens`: their mean prompt times the
arrivals per instance that their measured pace brings in one objective, at least one
prompt) would still get their first token in time by the load model's prediction: the
prefill queued there plus the batch request's own prompt plus those prompts, at the
instance's learnt speeds (`load_model.prefill_time_s`). One typical prompt of room is
enough while they trickle in; in a burst of them, the room grows with the burst, and batch
work stops filling the steps the burst needs. The rest of the batch work waits in the
coordinator's queue, where the policy orders it, and goes out as the engines' prefill
drains. An instance with nothing queued always takes it (a prompt longer than the room
would otherwise never run). Requests with an objective are not held by this gate, nor, on
an engine declared `scheduling_policy: priority`, by the step-counted one: the engine's
priority order puts them ahead of every waiting request, and the routers pick the instance
with the shortest predicted TTFT (on an engine in arrival order they would wait behind its
queue anyway, so the step-counted gate still holds them). A request whose objective was
given up (demoted by the policy) is work without one and passes this gate as such.

Every request, with an objective or without, also keeps the objectives of those already
waiting for their first token on the instance (`keeps_due`): it is not sent where, by the
load model, it would make one of them late. The engine's chunked prefill runs what waits
in one step up to its token budget, and each of them gets its first token only when its
step ends, so a newcomer lengthens the steps of those ahead of it in the queue too; a
request already late without the newcomer is not protected (its objective is lost anyway,
and it must not hold back work that can still be served). This is what keeps the most
objectives in an overload: the work that would make the set late waits, in the
coordinator's queue, where the policy may still demote it (Moore-Hodgson's rule: the
job that makes the set late is set aside; here it is the newcomer, whose own prompt the
policy counts when it judges whether it can still make its objective).

Nothing is fitted to a workload: the objective is the users' own, the prompt and the pace
are means of the requests that carry it, and the speeds are the instance's learnt ones.
"While arriving" means within `horizon_gaps` of their recent mean inter-arrival gap since
the last one, or within the longest gap seen between two of them: bursty arrivals pause
between bursts far longer than their gaps inside one, and a reserve lifted in such a pause
lets batch work fill the engines just before the next burst (a class that pauses longer
than both is taken to have stopped, and the gate lifts; before a second one shows the
pace, the objective itself stands in for the gap). The longest gap only grows: a class
that once paused for an hour keeps the reserve through its next pause of up to an hour.
That errs on the cheaper side: with the reserve on, batch work is held only beyond the
room kept and still runs (its cost is measured in docs/benchmarks.md, slo_classes session
14), while a reserve lifted just before a burst costs that burst its objectives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sage_cp_plugin import load_model
from sage_cp_plugin.state import Ewma, InstanceState


@dataclass(slots=True)
class TTFTReserve:
    """What the coordinator knows of the TTFT objectives it is serving, and the gate."""

    horizon_gaps: float = 10.0
    slo_s: float | None = None  # the tightest TTFT objective among recent requests
    prompt_tokens: Ewma = field(default_factory=Ewma)
    gap_s: Ewma = field(default_factory=Ewma)
    longest_gap_s: float = 0.0  # between two requests with an objective, ever
    last_at: float | None = None

    def note(self, ttft_slo_s: float, prompt_tokens: int, now: float) -> None:
        """A request with a TTFT objective of `ttft_slo_s` was admitted at `now`."""
        if not self.active(now):
            self.slo_s = None  # a class that had stopped: its objective no longer binds
        self.slo_s = ttft_slo_s if self.slo_s is None else min(self.slo_s, ttft_slo_s)
        self.prompt_tokens.add(float(prompt_tokens))
        if self.last_at is not None:
            gap = max(0.0, now - self.last_at)
            self.gap_s.add(gap)
            self.longest_gap_s = max(self.longest_gap_s, gap)
        self.last_at = now

    def active(self, now: float) -> bool:
        """Requests with an objective are still arriving (one within the horizon)."""
        if self.last_at is None:
            return False
        # One seen and no gap yet: its own objective stands in for the pace.
        gap = self.gap_s.get(self.slo_s or 0.0)
        return now - self.last_at <= max(self.horizon_gaps * gap, self.longest_gap_s)

    def expected_tokens(self, instances: int) -> float:
        """Prompt tokens of the requests with an objective expected to arrive at one of
        `instances` within one objective at their current pace, at least one prompt."""
        slo = self.slo_s or 0.0
        own = self.prompt_tokens.get(0.0)
        gap = self.gap_s.get(slo)
        per_instance = slo / (gap * max(1, instances)) if gap > 0 else 1.0
        return own * max(1.0, per_instance)

    def batch_fits(self, state: InstanceState, tokens: int, now: float, instances: int = 1) -> bool:
        """`state` may take a request without an objective with `tokens` to prefill: after
        it, the requests with the tightest objective expected there within one objective
        would still meet it (always true while none are arriving, or with nothing queued on
        `state`)."""
        slo = self.slo_s
        if slo is None or state.prefill_seqs <= 0 or not self.active(now):
            return True
        ahead = load_model.prefill_ahead(state, now) + max(1, tokens)
        if load_model.prefill_time_s(state, ahead + self.expected_tokens(instances)) > slo:
            return False
        return keeps_due(state, tokens, now)


def keeps_due(state: InstanceState, tokens: int, now: float) -> bool:
    """Sending `state` a request with `tokens` to prefill now leaves every request still
    prefilling there with a TTFT objective it would meet on time (by the load model). The
    new request is taken to delay all of them: the engine's chunked prefill runs what waits
    in one step up to its token budget, and each of them gets its first token only when its
    step ends. A request already late without it is not protected: its objective is lost
    either way, and it must not hold back work that can still be served."""
    extra = max(1, tokens)
    for ahead, due in load_model.waiting_due(state, now):
        if now + load_model.prefill_time_s(state, ahead) > due:
            continue
        if now + load_model.prefill_time_s(state, ahead + extra) > due:
            return False
    return True
