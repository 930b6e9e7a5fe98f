"""SharingPlan: mapping tables exactly as DESIGN.md §1 defines them, runs, groups, and bad input."""
import pytest

from spin_kernels import SharingPlan


@pytest.mark.parametrize("mapping, expected", [
    ("sequential", [0, 0, 1, 1, 2, 2]),
    ("strided", [0, 1, 2, 0, 1, 2]),
    ("cycle", [0, 1, 2, 0, 1, 2]),
    ("cycle_rev", [0, 1, 2, 2, 1, 0]),
])
def test_mappings_l6_u3(mapping, expected):
    assert SharingPlan(6, rate=2, mapping=mapping).layer_to_unique == expected


def test_cycle_rev_l12_u4():
    assert SharingPlan(12, rate=3, mapping="cycle_rev").layer_to_unique == [0, 1, 2, 3, 0, 1, 2, 3, 3, 2, 1, 0]


def test_rate_one_is_identity_for_every_mapping():
    for mapping in ("sequential", "strided", "cycle_rev", "random"):
        assert SharingPlan(5, rate=1, mapping=mapping).layer_to_unique == [0, 1, 2, 3, 4]


def test_random_is_seeded_uniform_and_canonical():
    a = SharingPlan(12, rate=3, mapping="random", seed=7)
    assert a.layer_to_unique == SharingPlan(12, rate=3, mapping="random", seed=7).layer_to_unique
    assert a.layer_to_unique != SharingPlan(12, rate=3, mapping="random", seed=8).layer_to_unique
    assert sorted(a.layer_to_unique.count(u) for u in range(a.num_unique)) == [3, 3, 3, 3]
    assert a.layer_to_unique[0] == 0  # numbered in order of first use


def test_unshared_ends_sandwich():
    plan = SharingPlan(8, rate=2, mapping="sequential", unshared_ends=(1, 1))
    assert plan.layer_to_unique == [0, 1, 1, 2, 2, 3, 3, 4]
    assert plan.num_unique == 5
    plan = SharingPlan(8, rate=3, mapping="strided", unshared_ends=(2, 0))
    assert plan.layer_to_unique == [0, 1, 2, 3, 2, 3, 2, 3]


def test_runs_and_groups():
    plan = SharingPlan.from_list([0, 0, 1, 1, 1, 0, 2])
    assert plan.runs == [(0, 2), (2, 5), (5, 6), (6, 7)]
    assert plan.groups == [[0, 1, 5], [2, 3, 4], [6]]
    assert plan.num_unique == 3 and plan.is_shared
    assert SharingPlan(4).runs == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert SharingPlan(32, rate=2).runs[:2] == [(0, 2), (2, 4)]


def test_from_list_renumbers_in_order_of_first_use():
    assert SharingPlan.from_list([2, 2, 0, 1]).layer_to_unique == [0, 0, 1, 2]


@pytest.mark.parametrize("kwargs, message", [
    (dict(depth=6, rate=4), "does not divide"),
    (dict(depth=6, rate=0), "rate"),
    (dict(depth=6, rate=2, mapping="zigzag"), "sequential, strided, cycle, cycle_rev, random"),
    (dict(depth=0), "depth"),
    (dict(depth=4, unshared_ends=(2, 2)), "no shared layers"),
    (dict(depth=4, mapping=[0, 1, 2]), "depth is 4"),
    (dict(depth=3, mapping=[0, 2, 2]), "missing [1]"),
])
def test_bad_input_names_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=None) as err:
        SharingPlan(**kwargs)
    assert message in str(err.value)


def test_from_list_bad_input():
    with pytest.raises(ValueError, match="without gaps"):
        SharingPlan.from_list([0, 3])
    with pytest.raises(ValueError, match="empty"):
        SharingPlan.from_list([])
    with pytest.raises(ValueError, match="non-negative"):
        SharingPlan.from_list([0, -1])
