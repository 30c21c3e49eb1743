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


def filled(design, blocks, groups=None, **options):
    # relative std ~1e-6 at the 1e6 offset: exact shifted sums matter here, not the dead tolerance
    acc = make_accumulator(design, 5, groups=groups, **options)
    acc.dead_tolerance = 0.0
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
    clone.dead_tolerance = 0.0
    clone.load_state_dict(acc.state_dict())
    assert_same(acc.compute(), clone.compute(), rtol=0)
    for a in (acc, clone):                     # resuming: both continue identically
        b = design.block(1)
        a.update(b, outputs_for(b))
    assert_same(acc.compute(), clone.compute(), rtol=0)


def test_aggregated_indices_are_variance_weighted_and_singletons_reproduce_outputs():
    design = make_design("sobol", [1, 1, 1], 128, seed=2, block_size=32)
    groups = torch.tensor([0, 0, 1, 2, 2])
    # layer estimates are ratios of summed paired-form statistics (those their intervals describe),
    # whatever the denominator: the paired per-output estimates, variance-weighted
    pooled = filled(design, range(4), groups).compute()
    r = filled(design, range(4), groups, denominator="paired").compute()
    for q in ("first_order", "first_order_ci", "total_order", "total_order_ci"):
        np.testing.assert_allclose(getattr(pooled.aggregated, q), getattr(r.aggregated, q), rtol=1e-12, err_msg=q)
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
    # the nuisance (sd 5) is gone from the intervals too; their coverage is checked in test_interval_strength
    assert np.all(np.diff(paired.first_order_ci[:, 0], axis=0) < 0.01)
    assert pooled.first_order[0].sum() < 0.1


def test_moment_accumulator_merges_exactly():
    rng = np.random.default_rng(0)
    y = 1e8 + rng.normal(size=(300, 4))
    y[:, 3] = 7.0
    whole, a, b = (MomentAccumulator(4, dead_tolerance=0.0) for _ in range(3))   # std 1e-8 of the mean
    whole.update(torch.as_tensor(y))
    a.update(torch.as_tensor(y[:100]))
    b.update(torch.as_tensor(y[100:]))
    a.merge(b)
    r = a.compute()
    np.testing.assert_allclose(r.variance[:3], y[:, :3].var(0, ddof=1), rtol=1e-9)
    np.testing.assert_allclose(r.variance, whole.compute().variance, rtol=1e-12)
    assert r.dead.tolist() == [False, False, False, True] and np.isnan(r.cv[3])


def test_merge_refuses_other_designs_seeds_and_overlaps():
    d1 = make_design("sobol", [1, 1, 1], 512, seed=1, block_size=16)
    d2 = make_design("sobol", [1, 1, 1], 512, seed=2, block_size=16)
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


def _near_constant(block, rng, level=3.0):
    """Outputs (r, G, 3): constant + 1e-9 relative noise (float32-rounding-like), relative std 1e-4
    driven by the factors, and an O(1) output."""
    x = torch.as_tensor(block.points)
    noise = torch.as_tensor(rng.normal(size=x.shape[:2]))
    signal = x[..., 0] - 0.5 + 0.5 * x[..., 1]
    return torch.stack([level * (1 + 1e-9 * noise), level * (1 + 1e-4 * signal), signal], -1)


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_constant_up_to_rounding_are_dead_but_small_effects_are_not(kind):
    design = make_design(kind, [1, 1], 256, seed=5, block_size=64)
    rng = np.random.default_rng(0)
    accs = [make_accumulator(design, 3), make_accumulator(design, 3)]
    assert accs[0].dead_tolerance == 1e-6
    accs[1].dead_tolerance = 0.0
    for b in design.blocks():
        y = _near_constant(b, rng)
        for acc in accs:
            acc.update(b, y)
    default, exact = (acc.compute() for acc in accs)
    assert default.dead.tolist() == [True, False, False]
    assert exact.dead.tolist() == [False, False, False]            # tol 0: only exact constants
    index = default.first_order if default.first_order is not None else default.shapley
    assert np.isnan(index[0]).all() and np.isfinite(index[1:]).all()
    np.testing.assert_allclose(index[1], index[2], rtol=1e-6)   # same signal, scaled: same indices


def test_dead_tolerance_in_moments_groups_and_bad_values():
    rng = np.random.default_rng(1)
    y = np.stack([7.0 * (1 + 1e-9 * rng.normal(size=500)), 7.0 * (1 + 1e-4 * rng.normal(size=500)),
                  np.zeros(500)], 1)
    acc = MomentAccumulator(3)
    acc.update(torch.as_tensor(y))
    r = acc.compute()
    assert r.dead.tolist() == [True, False, True] and np.isnan(r.cv[[0, 2]]).all()
    design = make_design("sobol", [1, 1], 256, seed=5, block_size=64)
    acc = make_accumulator(design, 3, groups=torch.tensor([0, 1, 1]))
    for b in design.blocks():
        acc.update(b, _near_constant(b, rng))
    agg = acc.compute().aggregated
    assert agg.dead.tolist() == [True, False] and np.isnan(agg.first_order[0]).all()
    r = sobol_indices(lambda x: 2.0 + 1e-12 * x[:, 0], [(0, 1)], 64, dead_tolerance=0.0)
    assert not r.dead[0] and sobol_indices(lambda x: 2.0 + 1e-12 * x[:, 0], [(0, 1)], 64).dead[0]
    for bad in (-1e-6, 1.0, "small"):
        with pytest.raises(AugsenseError, match="dead_tolerance"):
            acc.dead_tolerance = bad
        with pytest.raises(AugsenseError, match="dead_tolerance"):
            MomentAccumulator(3, dead_tolerance=bad)


@pytest.mark.parametrize("denominator", ["pooled", "paired"])
def test_power_basis_sums_equal_the_naive_row_sums_and_block_outer_product(denominator):
    # the fast path sums weighted powers of D = f_AB_i - f_A; compare with z built row by row
    from augsense.estimators import _delta

    design = make_design("sobol", [1, 2, 1], 2048, seed=6, block_size=64)
    block = design.block(0)
    y = outputs_for(block, 4) - 1e6
    acc = make_accumulator(design, 4, denominator=denominator)
    acc.update(block, y)
    v = y - acc.shift
    a, b, ab = v[:, 0], v[:, 1], v[:, 2:]
    D = ab - a[:, None]
    if denominator == "pooled":
        parts = [b[:, None] * D, D, 0.5 * D * D, (0.5 * (a * a + b * b))[:, None].expand_as(D),
                 (a + b)[:, None].expand_as(D)]
    else:
        parts = [(b[:, None] - 0.5 * (a[:, None] + ab)) * D, D, 0.5 * D * D, (0.5 * (a - b) ** 2)[:, None].expand_as(D)]
    s1 = torch.stack(parts, -1).transpose(1, 2).sum(0)                  # (m, d, p)
    # the denominator terms are stored once per output ("w1", "w2"); join_shared gives every cell its copy
    sums = acc.state_dict()["sums"]   # output-major, as saved
    c1, c2 = _delta.join_shared(sums["c1"], sums["c2"], sums["w1"], sums["w2"])
    np.testing.assert_allclose(c1, s1, rtol=1e-10, atol=1e-10 * s1.abs().max().item())
    # second moments are kept per block (the replicates behind the intervals): the block sum's outer product
    block_outer = _delta.block_outer(s1)
    np.testing.assert_allclose(c2, block_outer, rtol=1e-10, atol=1e-10 * block_outer.abs().max().item())
