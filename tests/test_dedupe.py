"""The consumer-side deduper against a plain set, for any delivery order hypothesis can produce."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.dedupe import Deduper


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 60)), max_size=300))
def test_first_time_matches_a_set(deliveries):
    d, seen = Deduper(), set()
    for agent, seq in deliveries:
        assert d.first_time(agent, seq) == ((agent, seq) not in seen)
        seen.add((agent, seq))


def test_gaps_are_reported_and_memory_stays_bounded():
    d = Deduper(max_pending=10)
    for seq in [1, 2, 5, 6, 9]:
        d.first_time("a", seq)
    assert d.missing("a") == [(3, 4), (7, 8)]
    for seq in range(100, 200):  # a gap (10..99) that never fills
        d.first_time("a", seq)
    assert len(d._agents["a"].above) <= 10
    assert not d.first_time("a", 150)
