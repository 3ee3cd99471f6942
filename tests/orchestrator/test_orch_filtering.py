"""The filtering search's ranking (drl.ranked_groups) on a hand-built state: which group comes
first with no opening penalty (fewest newly used machines, then Q) and with one (Q minus the
penalty per newly used machine). Expected groups are worked out by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest
from orch_cases import tiny_instance_json

from cyberstar.orchestrator.cluster import Cluster
from cyberstar.orchestrator.drl import AgentConfig, ranked_groups
from cyberstar.orchestrator.files import parse_instance

# Groups of two among four machines, m0 and m1 already used; per-machine q below, so
#   (0,1): 0 new, Q 0.0;  (0,2), (1,2): 1 new, Q 0.4;  (0,3), (1,3): 1 new, Q 0.3;
#   (2,3): 2 new, Q 0.7
Q = np.array([[0.0, 0.0, 0.4, 0.3]])


@pytest.fixture
def state() -> tuple[Cluster, np.ndarray]:
    instance = parse_instance(tiny_instance_json(gmin=2, gmax=2, max_overlap=2))
    cluster = Cluster(instance)
    cluster.place("r0", [0, 1], np.array(instance.requests[0].demand))
    return cluster, np.array(instance.requests[2].demand)


@pytest.mark.parametrize(
    "penalty, first",
    [
        (None, (0, 1)),  # fewest new first: the only group opening nothing
        (0.1, (2, 3)),  # 0.7 - 0.2 = 0.5 beats 0.4 - 0.1 = 0.3 and 0.0
        (0.25, (2, 3)),  # 0.7 - 0.5 = 0.2 beats 0.4 - 0.25 = 0.15
        (0.35, (0, 2)),  # 0.4 - 0.35 = 0.05 beats 0.0 and 0.7 - 0.7 = 0.0; (1,2) ties, later
        (0.5, (0, 1)),  # 0.0 beats -0.1 and -0.3
    ],
)
def test_first_group_under_each_ranking(state, penalty, first):
    cluster, demand = state
    config = AgentConfig(opening_penalty=penalty)
    ranked = list(ranked_groups(cluster, demand, Q, config, None))
    assert ranked[0][0] == first
    assert ranked[0][2] == pytest.approx(Q[0, list(first)].sum())
    assert sorted(g for g, _, _ in ranked) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def test_ties_on_the_penalised_value_go_to_fewer_new_machines(state):
    cluster, demand = state
    # Penalty 0.25: (0,1) scores 0, (0,2) 0.25 - 0.25 = 0, (2,3) 0.5 - 0.5 = 0 (exact in binary).
    q = np.array([[0.0, 0.0, 0.25, 0.25]])
    config = AgentConfig(opening_penalty=0.25)
    assert [g for g, _, _ in ranked_groups(cluster, demand, q, config, None)][:3] == [
        (0, 1),
        (0, 2),
        (0, 3),
    ]
