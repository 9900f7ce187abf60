"""Exactly-once for consumers: frames are delivered at least once, so drop repeats by (agent, seq).

Redelivery is by design: a frame whose PUBACK was lost in an outage is published again. Because seq
increases by exactly 1 per frame and continues across restarts, a consumer needs only, per agent,
the highest seq below which it has seen everything (`floor`) and the few seqs seen above it. This is
the reference a cloud-side decoder can copy; `edge-agent tail --dedupe` uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _AgentState:
    floor: int = 0  # every seq <= floor has been seen (or given up on)
    above: set[int] = field(default_factory=set)


class Deduper:
    def __init__(self, max_pending: int = 100_000):
        # A gap that never fills (frames dropped by a full spool) must not grow memory forever: past
        # max_pending seqs above the floor, the floor jumps to the oldest seq seen.
        self.max_pending = max_pending
        self._agents: dict[str, _AgentState] = {}
        self.duplicates = 0

    def first_time(self, agent: str, seq: int) -> bool:
        """True the first time (agent, seq) is offered, False for every repeat."""
        st = self._agents.setdefault(agent, _AgentState())
        if seq <= st.floor or seq in st.above:
            self.duplicates += 1
            return False
        st.above.add(seq)
        while st.floor + 1 in st.above:
            st.floor += 1
            st.above.discard(st.floor)
        if len(st.above) > self.max_pending:
            st.floor = min(st.above)
            st.above.discard(st.floor)
            while st.floor + 1 in st.above:
                st.floor += 1
                st.above.discard(st.floor)
        return True

    def missing(self, agent: str) -> list[tuple[int, int]]:
        """Gaps (first, last) below the highest seq seen: not arrived yet, or dropped at the edge."""
        st = self._agents.get(agent)
        if st is None or not st.above:
            return []
        gaps, prev = [], st.floor
        for seq in sorted(st.above):
            if seq > prev + 1:
                gaps.append((prev + 1, seq - 1))
            prev = seq
        return gaps
