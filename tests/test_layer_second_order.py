"""Layer-level second-order Sobol indices S2 = Σ_c V_ij^(c) / Σ_c V^(c) with delta-method intervals.

The accumulator keeps, per layer (output group) and pair i < j, the sums of the shift-invariant
per-row statistic (f_BA_i - f_B)(f_AB_j - f_A), unbiased for the pure interaction V_ij, and of
(f_A - f_B)^2 / 2 (issue #14: intervals on every index shown). Checked here: analytic values on
polynomial units (exact truth from :mod:`exact`), two-sided coverage of iid replicates, merge and
resume equal to one pass, shift invariance, refusal of older states, and the report's matrices.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from augsense.design import make_design
from augsense.errors import AugsenseError
from augsense.estimators import make_accumulator
from augsense.estimators.results import SensitivityResult
from augsense.io.results import write_result_tables
from exact import closed_variances, gauss_legendre
from test_interval_strength import D, UNITS, _blocks, _from_b, check_two_sided, components

PLAYERS = ["p0", "p1", "p2", "p3"]
#: per unit (a0, a1, c01, c12, s3): a0 u0 + a1 u1 + c01 u0 u1 + c12 u1 u2^2 + s3 u3 (u = x - ½), two layers
POLY = np.array([[1.0, 0.5, 3.0, 0.0, 0.3],
                 [0.3, 1.0, 0.0, 16.0, 0.5],
                 [2.0, 0.0, 2.0, 8.0, 0.1],
                 [0.5, 0.5, 1.0, 0.0, 1.0],
                 [0.0, 1.0, 0.0, 12.0, 0.2]])
POLY_GROUPS = np.array([0, 0, 0, 1, 1])
#: each unit's offset and scale: different shifts per output, which the group sums must not see
OFFSET = np.array([1e3, -50.0, 0.0, 7.0, 2e4])


def polynomial_units(x: np.ndarray) -> np.ndarray:
    """(..., 4) in [0, 1] -> (..., 5): the units of :data:`POLY` plus :data:`OFFSET`."""
    u = x - 0.5
    terms = np.stack([u[..., 0], u[..., 1], u[..., 0] * u[..., 1], u[..., 1] * u[..., 2] ** 2, u[..., 3]], -1)
    return terms @ POLY.T + OFFSET


def exact_layer_s2(f, groups: np.ndarray, nodes: int = 4) -> np.ndarray:
    """(n_groups, d, d) exact Σ_c V_ij^(c) / Σ_c V^(c) (pure V_ij = V_{ij}^closed - V_i - V_j), by
    Gauss–Legendre summation (exact for these polynomials)."""
    x, w = gauss_legendre(0.0, 1.0, nodes)
    grid = np.stack(np.meshgrid(*[x] * D, indexing="ij"), -1)                 # (k, k, k, k, 4)
    values = f(grid)                                                          # (k, k, k, k, U)
    n_groups = groups.max() + 1
    num, den = np.zeros((n_groups, D, D)), np.zeros(n_groups)
    for unit in range(values.shape[-1]):
        v = closed_variances(values[..., unit], [w] * D)
        den[groups[unit]] += v[frozenset(range(D))]
        for i in range(D):
            for j in range(D):
                if i != j:
                    num[groups[unit], i, j] += v[frozenset({i, j})] - v[frozenset({i})] - v[frozenset({j})]
    out = num / den[:, None, None]
    out[:, np.arange(D), np.arange(D)] = np.nan
    return out


def filled(n: int = 4096, blocks=None, seed: int = 3, denominator: str = "pooled", **options):
    """A grouped sobol2 accumulator over the polynomial units (QMC design, 64-row blocks)."""
    design = make_design("sobol2", [1] * D, n, seed=seed, block_size=64)
    acc = make_accumulator(design, len(POLY_GROUPS), groups=torch.as_tensor(POLY_GROUPS), denominator=denominator,
                           **options)
    for k in (range(design.n_blocks) if blocks is None else blocks):
        block = design.block(k)
        acc.update(block, torch.as_tensor(polynomial_units(block.points)))
    return acc


def check_pairs_near_truth(estimate: np.ndarray, ci: np.ndarray, truth: np.ndarray, max_se: float):
    """Layer-level pair estimates (groups, d, d) with their 95 % intervals (2, groups, d, d): every pair i < j
    within 4 SE of ``truth``, SE (from the interval) below ``max_se`` (informative, not merely wide), and the
    matrix symmetric. Returns the pair indices and the pairs' estimates (iu, ju, est)."""
    iu, ju = np.triu_indices(estimate.shape[-1], 1)
    est, low, high = estimate[:, iu, ju], ci[0][:, iu, ju], ci[1][:, iu, ju]
    se = (high - low) / (2 * 1.96)
    assert np.all(se < max_se), se
    assert np.all(np.abs(est - truth[:, iu, ju]) <= 4 * se + 1e-12), (est, truth[:, iu, ju], se)
    np.testing.assert_array_equal(estimate, np.swapaxes(estimate, 1, 2))
    return iu, ju, est


def test_layer_second_order_matches_the_exact_sums_over_units():
    truth = exact_layer_s2(lambda x: polynomial_units(x) - OFFSET, POLY_GROUPS)   # exact sums need no offset
    assert truth[0, 0, 1] > 0.05 and truth[1, 1, 2] > 0.1 and abs(truth[0, 0, 3]) < 1e-12   # planted pairs and a null
    res = filled().compute()
    agg = res.aggregated
    assert agg.second_order.shape == (2, D, D) and agg.second_order_ci.shape == (2, 2, D, D)
    iu, ju, _ = check_pairs_near_truth(agg.second_order, agg.second_order_ci, truth, max_se=0.02)
    assert np.isnan(agg.second_order[:, np.arange(D), np.arange(D)]).all()
    # the same quantity as the per-unit S2 pooled by variance (different estimators, same target)
    pooled = np.stack([np.nansum((res.second_order * res.variance[:, None, None])[POLY_GROUPS == g], 0)
                       / res.variance[POLY_GROUPS == g].sum() for g in range(2)])
    np.testing.assert_allclose(pooled[:, iu, ju], truth[:, iu, ju], atol=0.03)


def test_ishigami_layer_of_one_unit_gives_its_s13():
    """A group of one Ishigami unit: S2_13 = V13 / V (Ishigami & Homma 1990), every other pair 0."""
    from test_interval_strength import ishigami, ishigami_truth

    design = make_design("sobol2", [1] * D, 8192, seed=4, block_size=64)
    acc = make_accumulator(design, 1, groups=torch.zeros(1, dtype=torch.int64))
    for block in design.blocks():
        acc.update(block, torch.as_tensor(ishigami(block.points))[..., None])
    agg = acc.compute().aggregated
    s13 = ishigami_truth()["total_order"][2]
    est, (low, high) = agg.second_order[0, 0, 2], agg.second_order_ci[:, 0, 0, 2]
    assert low <= s13 <= high and high - low < 0.1, (est, low, high, s13)
    assert abs(agg.second_order[0, 0, 1]) < 0.03 and agg.second_order_ci[0, 0, 0, 1] <= 0 <= agg.second_order_ci[1, 0, 0, 1]


def iid_layer_aggregate(kind: str, n: int, n_rep: int, seed: int) -> SensitivityResult:
    """The layer-level results (one group per replicate) of K iid replicates of the four component units of
    :data:`UNITS`, a design of ``kind`` with n rows, all in one accumulator."""
    rng = np.random.default_rng(seed)
    design = make_design(kind, [1] * D, n, seed=0, block_size=n)
    U = UNITS.shape[0]
    acc = make_accumulator(design, n_rep * U, groups=torch.as_tensor(np.repeat(np.arange(n_rep), U)))
    for block in _blocks(design, kind, rng):
        r = block.points.shape[0]
        A, B = rng.random((2, n_rep, r, D))
        X = np.where(_from_b(kind, block)[None], B[:, :, None], A[:, :, None])         # (K, r, G, d)
        y = components(X)                                                              # (K, r, G, U)
        acc.update(block, torch.as_tensor(y.transpose(1, 2, 0, 3).reshape(r, y.shape[2], -1)))
    return acc.compute().aggregated


def _iid_layer_s2(n: int, n_rep: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Layer S2 (K, d, d) and interval (2, K, d, d) of K iid replicates (:func:`iid_layer_aggregate`)."""
    agg = iid_layer_aggregate("sobol2", n, n_rep, seed)
    return agg.second_order, agg.second_order_ci


def test_layer_second_order_intervals_cover_95_percent_two_sided():
    """200 iid replicates of a layer of four units (only x1, x3 interact): every pair's coverage in
    [0.90, 0.99] (binomial ±3 SD of 0.95 is ±0.046), delta-method SE within ±25 % of the spread."""
    est, ci = _iid_layer_s2(256, 200, seed=31)
    V = (UNITS ** 2).sum()
    truth = np.zeros((D, D))
    truth[0, 2] = truth[2, 0] = (UNITS[:, 2] ** 2).sum() / V
    iu, ju = np.triu_indices(D, 1)
    check_two_sided("layer second_order", est[:, iu, ju], ci[:, :, iu, ju], truth[iu, ju])


def check_shards_and_resume_equal_one_pass(fill, names: tuple[str, ...], **options) -> None:
    """Three shards with other shifts merged, and a resume through a state dict, equal one pass over
    512 rows (``fill(n, blocks=…, **options)``: a grouped accumulator over the polynomial units)."""
    whole = fill(512, **options).compute().aggregated
    n_blocks = fill(512, blocks=[], **options).design.n_blocks
    parts = [fill(512, blocks=range(r, n_blocks, 3), **options) for r in range(3)]
    assert not torch.equal(parts[0].shift, parts[1].shift)
    for part in parts[1:]:
        parts[0].merge(part)
    # resume: half the blocks, through a state dict, then the rest
    first = fill(512, blocks=range(0, n_blocks // 2), **options)
    resumed = make_accumulator(first.design, len(POLY_GROUPS), groups=torch.as_tensor(POLY_GROUPS), **options)
    resumed.load_state_dict(first.state_dict())
    for k in range(n_blocks // 2, n_blocks):
        block = first.design.block(k)
        resumed.update(block, torch.as_tensor(polynomial_units(block.points)))
    for other in (parts[0], resumed):
        agg = other.compute().aggregated
        for name in names:
            np.testing.assert_allclose(getattr(agg, name), getattr(whole, name), rtol=1e-9, atol=1e-12,
                                       equal_nan=True, err_msg=name)


@pytest.mark.parametrize("denominator", ["pooled", "paired"])
def test_shards_with_other_shifts_and_a_resume_equal_one_pass(denominator):
    check_shards_and_resume_equal_one_pass(filled, ("second_order", "second_order_ci", "first_order_ci"),
                                           denominator=denominator)


def test_layer_second_order_does_not_see_output_shifts_and_keeps_intervals_without_unit_ones():
    base = filled(512).compute().aggregated
    design = make_design("sobol2", [1] * D, 512, seed=3, block_size=64)
    moved = make_accumulator(design, len(POLY_GROUPS), groups=torch.as_tensor(POLY_GROUPS),
                             second_order_intervals=False)
    for block in design.blocks():
        y = polynomial_units(block.points) + np.array([1e6, -3e5, 0.0, 0.0, 1e6]) * (block.index % 2)
        moved.update(block, torch.as_tensor(y))   # a different offset per block: only shift-invariant sums survive
    res = moved.compute()
    assert np.isnan(res.second_order_ci).all()   # --no-second-order-intervals drops the per-unit ones only
    iu, ju = np.triu_indices(D, 1)
    np.testing.assert_allclose(res.aggregated.second_order[:, iu, ju], base.second_order[:, iu, ju], rtol=1e-6)
    np.testing.assert_allclose(res.aggregated.second_order_ci[:, :, iu, ju], base.second_order_ci[:, :, iu, ju],
                               rtol=1e-6)


def test_a_grouped_sobol2_state_of_layout_2_is_refused_and_other_layout_2_states_are_read():
    acc = filled(512, blocks=[0, 1])
    state = acc.state_dict()
    assert state["layout"] == 3 and {"gp1", "gp2"} <= set(state["sums"])
    old = dict(state, layout=2, sums={k: v for k, v in state["sums"].items() if not k.startswith("gp")})
    fresh = make_accumulator(acc.design, len(POLY_GROUPS), groups=torch.as_tensor(POLY_GROUPS))
    with pytest.raises(AugsenseError, match="layout 2 of an earlier augsense.*start afresh"):
        fresh.load_state_dict(old)
    # without groups a layout-2 state holds the same sums as layout 3: read
    plain = make_accumulator(acc.design, len(POLY_GROUPS))
    block = acc.design.block(0)
    plain.update(block, torch.as_tensor(polynomial_units(block.points)))
    again = make_accumulator(acc.design, len(POLY_GROUPS))
    again.load_state_dict(dict(plain.state_dict(), layout=2))
    assert all(torch.equal(again.sums[k], v) for k, v in plain.sums.items())


def write_two_layer_folder(res: SensitivityResult, folder, players: list[str]) -> pd.DataFrame:
    """Write ``res`` of the five planted units as a complete run folder of two layers, "early" (units 0-2) and
    "late" (3-4), for the report; returns its layers.parquet."""
    write_result_tables(res, folder, players=players, layers=["early", "late"],
                        slices={"early": slice(0, 3), "late": slice(3, 5)}, unit_shapes={"early": (3,), "late": (2,)})
    (folder / "run.json").write_text(json.dumps({"status": "complete", "players": players,
                                                 "layers": {"early": {"unit_shape": [3]}, "late": {"unit_shape": [2]}}}))
    return pd.read_parquet(folder / "layers.parquet")


def test_layers_table_and_report_show_layer_level_s2_with_intervals(tmp_path):
    from augsense.report import figures
    from augsense.report.data import read_report_data
    from augsense.report.html import _interaction_section, write_report
    from augsense.report.page import Page

    res = filled(1024).compute()
    layers = ["early", "late"]
    table = write_two_layer_folder(res, tmp_path, PLAYERS)
    s2 = table[table["quantity"] == "second_order"]
    assert len(s2) == 2 * 6 and s2[["estimate", "ci_low", "ci_high"]].notna().all().all()
    row = s2[(s2["layer"] == "early") & (s2["factor"] == "p0") & (s2["factor2"] == "p1")].iloc[0]
    assert row["estimate"] == res.aggregated.second_order[0, 0, 1]
    assert row["ci_low"] == res.aggregated.second_order_ci[0, 0, 0, 1]

    data = read_report_data(tmp_path)
    panels = figures.pair_panels(data, "second_order")
    assert [layer for layer, _, _ in panels] == layers and all(ci is not None for _, _, ci in panels)
    np.testing.assert_array_equal(panels[0][1], res.aggregated.second_order[0])   # the estimator's, not pooled
    fig = figures.interaction_matrices(data, "second_order")
    texts = [t for ax in fig.axes for t in ax.texts]
    cells = [t.get_text() for t in texts if t.get_gid() and t.get_gid().startswith("cell-")]
    assert len(cells) == 2 * D * (D - 1)                          # every off-diagonal cell, both layers
    low, high = res.aggregated.second_order_ci[:, 0, 0, 1]
    assert f"[{low:.2f}, {high:.2f}]" in " ".join(cells)
    zero = {p.get_gid() for ax in fig.axes for p in ax.patches if (p.get_gid() or "").startswith("zero-")}
    contains_zero = (res.aggregated.second_order_ci[0] <= 0) & (0 <= res.aggregated.second_order_ci[1])
    expected = {f"zero-{layers[g]}-{i}-{j}" for g, i, j in zip(*np.nonzero(contains_zero))}
    assert zero == expected and "zero-early-0-1" not in zero and "zero-early-0-3" in zero

    page = write_report(tmp_path).read_text(encoding="utf-8")
    section = page[page.index('<section id="interactions">'):]
    section = section[:section.index("</section>")]
    assert "with its confidence interval" in section and "hatched: the interval contains 0" in section
    assert "Layer-level second-order S2 with confidence intervals" in section

    # a result folder of an earlier version (no layer-level pairs): pooled unit maps, no interval
    table[table["quantity"] != "second_order"].to_parquet(tmp_path / "layers.parquet", index=False)
    data = read_report_data(tmp_path)
    panels = figures.pair_panels(data, "second_order")
    assert all(ci is None for _, _, ci in panels) and np.isfinite(panels[0][1][0, 1])
    page = Page(tmp_path / "figures")
    _interaction_section(page, data)
    text = "".join(page.sections[0].parts)
    assert "holds no layer-level pairwise intervals" in text and "with confidence intervals (table)" not in text


@pytest.mark.slow
@pytest.mark.parametrize("n", [256, 1024])
def test_full_layer_second_order_coverage(n):
    """1000 iid replicates at small and large N, two-sided, as the fast test."""
    est, ci = _iid_layer_s2(n, 1000, seed=37)
    V = (UNITS ** 2).sum()
    truth = np.zeros((D, D))
    truth[0, 2] = truth[2, 0] = (UNITS[:, 2] ** 2).sum() / V
    iu, ju = np.triu_indices(D, 1)
    check_two_sided(f"layer second_order N={n}", est[:, iu, ju], ci[:, :, iu, ju], truth[iu, ju])
