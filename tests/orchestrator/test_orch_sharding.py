"""The (O+1)-subset index agrees with the pairwise definition of shuffle sharding."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cyberstar.orchestrator.sharding import ShardingIndex

MACHINES = 9


def pairwise_allows(placed: list[set[int]], candidate: set[int], overlap: int) -> bool:
    return all(len(candidate & other) <= overlap for other in placed)


groups = st.sets(st.integers(0, MACHINES - 1), min_size=1, max_size=5)


@settings(max_examples=300, deadline=None)
@given(overlap=st.integers(0, 3), requests=st.lists(groups, max_size=12), candidate=groups)
def test_index_equals_pairwise_check(overlap, requests, candidate):
    index = ShardingIndex(overlap, MACHINES)
    placed: list[set[int]] = []
    for i, group in enumerate(requests):
        allowed = index.allows(sorted(group))
        assert allowed == pairwise_allows(placed, group, overlap)
        if allowed:
            index.add(f"r{i}", sorted(group))
            placed.append(group)
    assert index.allows(sorted(candidate)) == pairwise_allows(placed, candidate, overlap)
    # The incremental form used by the search gives the same answer, machine by machine.
    chosen: list[int] = []
    incremental = True
    for e in sorted(candidate):
        incremental = incremental and index.allows_extension(chosen, e)
        chosen.append(e)
    assert incremental == index.allows(sorted(candidate))


@settings(max_examples=100, deadline=None)
@given(
    overlap=st.integers(0, 2), requests=st.lists(groups, min_size=1, max_size=10), data=st.data()
)
def test_removal_restores_the_index(overlap, requests, data):
    index = ShardingIndex(overlap, MACHINES)
    placed: dict[str, set[int]] = {}
    for i, group in enumerate(requests):
        if index.allows(sorted(group)):
            index.add(f"r{i}", sorted(group))
            placed[f"r{i}"] = group
    gone = data.draw(st.sets(st.sampled_from(sorted(placed))))
    for rid in gone:
        index.remove(rid, sorted(placed.pop(rid)))
    candidate = data.draw(groups)
    assert index.allows(sorted(candidate)) == pairwise_allows(
        list(placed.values()), candidate, overlap
    )
    assert index.degree.sum() == sum(
        len(list(index.subsets(g))) * (overlap + 1) for g in placed.values()
    )
