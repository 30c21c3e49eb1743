"""Merging, state round trips, groups, dead outputs, paired denominators and bad input."""

import numpy as np
import pytest
import torch

from augsense.design import make_design
from augsense.errors import AugsenseError
from augsense.estimators import MomentAccumulator, make_accumulator
from augsense.estimators.api import shapley_effects, sobol_indices

KINDS = ["sobol", "sobol2", "shapley-exact", "shapley-permutation"]
FIELDS = ["first_order", "first_order_ci", "total_order", "total_order_ci", "second_order", "second_order_ci",
          "shapley", "shapley_ci", "interactions", "interactions_ci", "subset_effects", "variance", "mean"]


def outputs_for(block, m=5):
    """Deterministic outputs (r, G, m) with a large offset to stress the shifted sums."""
    x = block.points
    cols = [1e6 + np.sin(6 * x[..., 0]) + 3 * x[..., 1] ** 2 + x[..., 0] * x[..., 2] * (k + 1) + 0.1 * k
            for k in range(m - 1)]
    cols.append(np.full(x.shape[:2], 2.5))                 # a dead output
    return torch.as_tensor(np.stack(cols, -1))


def filled(design, blocks, groups=None):
    acc = make_accumulator(design, 5, groups=groups)
    for k in blocks:
        b = design.block(k)
        acc.update(b, outputs_for(b))
    return acc


def assert_same(r1, r2, rtol=1e-12):
    for f in FIELDS:
        a, b = getattr(r1, f), getattr(r2, f)
        if a is None:
            assert b is None
            continue
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-12 * np.nanmax(np.abs(a)), equal_nan=True, err_msg=f)


@pytest.mark.parametrize("kind", KINDS)
def test_merging_1_2_and_7_shards_gives_the_same_indices(kind):
    design = make_design(kind, [1, 2, 1], 256, seed=3, block_size=16)
    groups = torch.tensor([0, 0, 1, 1, 1])
    whole = filled(design, range(16), groups).compute()
    for shards in (2, 7):
        parts = [filled(design, range(r, 16, shards), groups) for r in range(shards)]
        for p in parts[1:]:
            parts[0].merge(p)
        merged = parts[0].compute()
        assert_same(whole, merged)
        assert_same(whole.aggregated, merged.aggregated)
    assert whole.dead.tolist() == [False] * 4 + [True]
    assert np.isnan(whole.first_order if whole.first_order is not None else whole.shapley)[4].all()


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_changes_nothing(kind):
    design = make_design(kind, [1, 1, 1], 64, seed=1, block_size=16)
    acc = filled(design, [0, 2])
    clone = make_accumulator(design, 5)
    clone.load_state_dict(acc.state_dict())
    assert_same(acc.compute(), clone.compute(), rtol=0)
    for a in (acc, clone):                     # resuming: both continue identically
        b = design.block(1)
        a.update(b, outputs_for(b))
    assert_same(acc.compute(), clone.compute(), rtol=0)


def test_aggregated_indices_are_variance_weighted_and_singletons_reproduce_outputs():
    design = make_design("sobol", [1, 1, 1], 128, seed=2, block_size=32)
    r = filled(design, range(4), torch.tensor([0, 0, 1, 2, 2])).compute()
    live = ~r.dead
    V1, V = r.first_order_variance, r.variance
    np.testing.assert_allclose(r.aggregated.first_order[0], V1[:2].sum(0) / V[:2].sum(), rtol=1e-12)
    np.testing.assert_allclose(r.aggregated.first_order[1], r.first_order[2], rtol=1e-12)
    np.testing.assert_allclose(r.aggregated.first_order[2], r.first_order[3], rtol=1e-12)   # dead one ignored
    assert live.sum() == 4 and (r.aggregated.first_order_ci[0] <= r.aggregated.first_order).all()
    df = r.to_dataframe(factor_names=["a", "b", "c"], group_names=["g0", "g1", "g2"])
    assert set(df["level"]) == {"output", "group"} and set(df.columns) >= {
        "output", "factor", "factor2", "quantity", "estimate", "ci_low", "ci_high", "dead"}
    assert df.query("level == 'group' and quantity == 'first_order'").shape[0] == 9


def test_paired_denominator_removes_a_shared_per_row_nuisance():
    # every member of a group shares one "image" offset c: pooled variance includes var(c), paired does not
    design = make_design("sobol", [1, 1], 4096, seed=4, block_size=512)
    acc = {den: make_accumulator(design, 1, denominator=den) for den in ("pooled", "paired")}
    rng = np.random.default_rng(0)
    for b in design.blocks():
        c = 5 * rng.normal(size=(b.points.shape[0], 1))
        y = torch.as_tensor((b.points[..., 0] + 2 * b.points[..., 1] + c)[..., None])
        for a in acc.values():
            a.update(b, y)
    paired = acc["paired"].compute()
    pooled = acc["pooled"].compute()
    truth = np.array([1, 4]) / 5
    assert np.all(np.abs(paired.first_order[0] - truth) < 0.03)
    assert np.all(np.abs(paired.total_order[0] - truth) < 0.03)
    assert np.all((paired.first_order_ci[0, 0] <= truth) & (truth <= paired.first_order_ci[1, 0]))
    assert pooled.first_order[0].sum() < 0.1


def test_moment_accumulator_merges_exactly():
    rng = np.random.default_rng(0)
    y = 1e8 + rng.normal(size=(300, 4))
    y[:, 3] = 7.0
    whole, a, b = MomentAccumulator(4), MomentAccumulator(4), MomentAccumulator(4)
    whole.update(torch.as_tensor(y))
    a.update(torch.as_tensor(y[:100]))
    b.update(torch.as_tensor(y[100:]))
    a.merge(b)
    r = a.compute()
    np.testing.assert_allclose(r.variance[:3], y[:, :3].var(0, ddof=1), rtol=1e-9)
    np.testing.assert_allclose(r.variance, whole.compute().variance, rtol=1e-12)
    assert r.dead.tolist() == [False, False, False, True] and np.isnan(r.cv[3])


def test_merge_refuses_other_designs_seeds_and_overlaps():
    d1 = make_design("sobol", [1, 1, 1], 64, seed=1, block_size=16)
    d2 = make_design("sobol", [1, 1, 1], 64, seed=2, block_size=16)
    with pytest.raises(AugsenseError, match="different designs"):
        filled(d1, [0]).merge(filled(d2, [1]))
    with pytest.raises(AugsenseError, match="disjoint"):
        filled(d1, [0, 1]).merge(filled(d1, [1]))
    with pytest.raises(AugsenseError, match="already added"):
        filled(d1, [0]).update(d1.block(0), outputs_for(d1.block(0)))
    with pytest.raises(AugsenseError, match="shape"):
        make_accumulator(d1, 5).update(d1.block(0), outputs_for(d1.block(0))[:, :3])
    bad = outputs_for(d1.block(0))
    bad[2, 1, 0] = float("nan")
    with pytest.raises(AugsenseError, match="NaN"):
        make_accumulator(d1, 5).update(d1.block(0), bad)


def test_function_api_bad_input_gets_clear_errors():
    f = lambda x: x.sum(1)
    with pytest.raises(AugsenseError, match="low < high"):
        sobol_indices(f, [(0, 1), (2, 2)], 64)
    with pytest.raises(AugsenseError, match="power of two"):
        sobol_indices(f, [(0, 1)], 100)
    with pytest.raises(AugsenseError, match="method='permutation'"):
        shapley_effects(f, [(0, 1)] * 13, 64)
    with pytest.raises(AugsenseError, match="must return shape"):
        sobol_indices(lambda x: x.sum(), [(0, 1)], 64)
    with pytest.raises(AugsenseError, match="NaN"):
        sobol_indices(lambda x: np.where(x[:, 0] > 0.5, np.nan, x[:, 0]), [(0, 1)], 64)
    with pytest.raises(AugsenseError, match="confidence"):
        sobol_indices(f, [(0, 1)], 64, confidence=95)


def test_function_api_accepts_torch_outputs_and_many_outputs():
    r = sobol_indices(lambda x: torch.as_tensor(np.stack([x[:, 0], x[:, 0] + x[:, 1], 0 * x[:, 0]], 1)),
                      [(0, 1), (-1, 1)], 256, batch_size=100)
    assert r.first_order.shape == (3, 2) and r.first_order_ci.shape == (2, 3, 2) and r.second_order is None
    np.testing.assert_allclose(r.first_order[0], [1, 0], atol=0.02)
    assert r.dead.tolist() == [False, False, True]
