"""The slow-path bench's split of a batch's CPU into a fixed part and a part per first packet,
checked against fits computed by hand."""

from __future__ import annotations

import pytest

from cyberstar.lab.batch_cost import BatchCost, fit


def test_points_on_a_line_give_its_fixed_and_per_packet_cost() -> None:
    # 2 000 µs per batch + 100 µs per packet: batches of 1, 4 and 20 cost 2 100, 600 and
    # 200 µs per connection.
    cost = fit([(1, 2100), (4, 600), (20, 200)])
    assert cost.fixed_us == pytest.approx(2000)
    assert cost.per_packet_us == pytest.approx(100)
    assert cost.per_connection_us(8) == pytest.approx(350)


def test_least_squares_over_three_runs() -> None:
    # Per batch: 1 x 2 400, 5 x 560 = 2 800, 32 x 190 = 6 080 µs. By hand: mean batch 38/3,
    # mean cost 3 760; Sxx = 568.667, Sxy = 68 080; slope 119.72, intercept 2 243.6.
    cost = fit([(1, 2400), (5, 560), (32, 190)])
    assert cost.per_packet_us == pytest.approx(119.72, abs=0.01)
    assert cost.fixed_us == pytest.approx(2243.6, abs=0.1)


def test_fixed_cost_a_budget_allows() -> None:
    cost = BatchCost(fixed_us=2000, per_packet_us=100)
    # 200 µs a connection in batches of 5: (200 - 100) x 5.
    assert cost.fixed_allowed_us(200, 5) == pytest.approx(500)
    # A budget below the per-packet part allows no fixed cost at all.
    assert cost.fixed_allowed_us(80, 5) < 0


@pytest.mark.parametrize("points", [[(5, 600)], [(5, 600), (5, 500)], [(0, 1), (4, 500)]])
def test_one_batch_size_or_empty_batches_are_refused(points) -> None:
    with pytest.raises(ValueError, match="expected"):
        fit(points)
