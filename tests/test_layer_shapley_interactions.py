"""Layer-level pairwise Shapley interactions of exact-subset Shapley runs, with delta-method intervals.

The exact accumulator keeps, per layer (output group) and pair i < j, the sums of the per-row
interaction statistic (the linear map of the row's subset totals T_hat) and of the row's variance
term, summed over the layer's outputs: I_ij(layer) = Σ_c I_ij^(c) / Σ_c V^(c) (issue #14: intervals
on every index shown). Checked: exact values (Shapley interaction index Σ_{w ⊇ {i,j}} dividend(w) /
(|w| - 1) of polynomial units, by Gauss–Legendre summation), equality with the variance-weighted
per-output estimates, two-sided coverage of iid replicates, merge and resume, older states, report.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
import torch

from augsense.design import make_design
from augsense.errors import AugsenseError
from augsense.estimators import make_accumulator
from exact import closed_variances, gauss_legendre
from test_interval_strength import D, UNITS, check_two_sided
from test_layer_second_order import (OFFSET, POLY_GROUPS, check_pairs_near_truth, check_shards_and_resume_equal_one_pass,
                                     iid_layer_aggregate, polynomial_units, write_two_layer_folder)


def exact_layer_interactions(groups: np.ndarray, nodes: int = 4) -> np.ndarray:
    """(n_groups, d, d) exact Σ_c I_ij^(c) / Σ_c V^(c) of the polynomial units, NaN diagonal."""
    x, w = gauss_legendre(0.0, 1.0, nodes)
    values = polynomial_units(np.stack(np.meshgrid(*[x] * D, indexing="ij"), -1)) - OFFSET
    num, den = np.zeros((groups.max() + 1, D, D)), np.zeros(groups.max() + 1)
    for unit in range(values.shape[-1]):
        closed = closed_variances(values[..., unit], [w] * D)
        closed[frozenset()] = 0.0
        dividend = {frozenset(s): sum((-1) ** (k - len(v)) * closed[frozenset(v)]
                                      for m in range(k + 1) for v in combinations(s, m))
                    for k in range(D + 1) for s in combinations(range(D), k)}
        den[groups[unit]] += closed[frozenset(range(D))]
        for i, j in combinations(range(D), 2):
            share = sum(value / (len(s) - 1) for s, value in dividend.items() if {i, j} <= s)
            num[groups[unit], i, j] += share
            num[groups[unit], j, i] += share
    out = num / den[:, None, None]
    out[:, np.arange(D), np.arange(D)] = np.nan
    return out


def filled(n: int = 2048, blocks=None, seed: int = 3):
    design = make_design("shapley-exact", [1] * D, n, seed=seed, block_size=64)
    acc = make_accumulator(design, len(POLY_GROUPS), groups=torch.as_tensor(POLY_GROUPS))
    for k in (range(design.n_blocks) if blocks is None else blocks):
        block = design.block(k)
        acc.update(block, torch.as_tensor(polynomial_units(block.points)))
    return acc


def test_layer_interactions_match_the_exact_sums_over_units():
    truth = exact_layer_interactions(POLY_GROUPS)
    assert truth[0, 0, 1] > 0.05 and truth[1, 1, 2] > 0.1 and abs(truth[0, 0, 3]) < 1e-12
    res = filled().compute()
    agg = res.aggregated
    assert agg.interactions.shape == (2, D, D) and agg.interactions_ci.shape == (2, 2, D, D)
    iu, ju, est = check_pairs_near_truth(agg.interactions, agg.interactions_ci, truth, max_se=0.03)
    # the diagonal is the layer's Shapley effect, as in the per-output matrices
    np.testing.assert_array_equal(agg.interactions[:, np.arange(D), np.arange(D)], agg.shapley)
    # the same per-row statistics as the per-output estimates: the variance-weighted mean of those
    pooled = np.stack([(res.interactions * res.variance[:, None, None])[POLY_GROUPS == g].sum(0)
                       / res.variance[POLY_GROUPS == g].sum() for g in range(2)])
    np.testing.assert_allclose(pooled[:, iu, ju], est, rtol=1e-9, atol=1e-12)


def test_layer_interaction_intervals_cover_95_percent_two_sided():
    """200 iid replicates of a layer of four units (only x1, x3 interact: I_13 = Σ c² / Σ V): its
    coverage in [0.90, 0.99], delta-method SE within ±25 % of the spread; the other pairs exactly 0."""
    agg = iid_layer_aggregate("shapley-exact", 256, 200, seed=41)
    truth = np.zeros((D, D))
    truth[0, 2] = truth[2, 0] = (UNITS[:, 2] ** 2).sum() / (UNITS ** 2).sum()
    # the pairs without an interaction come out 0 up to rounding in every replicate (the subset totals of
    # additive parts cancel exactly), so their rounding-level intervals say nothing on coverage
    iu, ju = np.triu_indices(D, 1)
    null = ~((iu == 0) & (ju == 2))
    assert np.abs(agg.interactions[:, iu[null], ju[null]]).max() < 1e-9
    check_two_sided("layer interaction I_13", agg.interactions[:, 0, 2][:, None],
                    agg.interactions_ci[:, :, 0, 2][..., None], truth[0, 2][None])


def test_shards_with_other_shifts_and_a_resume_equal_one_pass():
    check_shards_and_resume_equal_one_pass(filled, ("interactions", "interactions_ci", "shapley_ci"))


def test_a_grouped_layout_1_state_is_refused_and_other_layout_1_states_are_read():
    state = filled(128).state_dict()
    old = state | {"layout": 1, "sums": {k: v for k, v in state["sums"].items() if not k.startswith("gi")}}
    fresh = make_accumulator(filled(128, blocks=[]).design, len(POLY_GROUPS), groups=torch.as_tensor(POLY_GROUPS))
    with pytest.raises(AugsenseError, match="layout 1 of an earlier augsense"):
        fresh.load_state_dict(old)
    design = make_design("shapley-exact", [1] * D, 128, seed=3, block_size=64)
    ungrouped = make_accumulator(design, len(POLY_GROUPS))
    for block in design.blocks():
        ungrouped.update(block, torch.as_tensor(polynomial_units(block.points)))
    again = make_accumulator(design, len(POLY_GROUPS))
    again.load_state_dict(ungrouped.state_dict() | {"layout": 1})
    np.testing.assert_array_equal(again.compute().shapley, ungrouped.compute().shapley)


def test_layers_table_and_report_show_layer_level_interactions_with_intervals(tmp_path):
    from augsense.report import figures
    from augsense.report.data import read_report_data
    from augsense.report.html import write_report

    players = ["p0", "p1", "p2", "p3"]
    res = filled(512).compute()
    layers = ["early", "late"]
    table = write_two_layer_folder(res, tmp_path, players)
    rows = table[table["quantity"] == "interactions"]
    assert len(rows) == 2 * 6 and rows[["estimate", "ci_low", "ci_high"]].notna().all().all()
    data = read_report_data(tmp_path)
    panels = figures.pair_panels(data, "interactions")
    assert [layer for layer, _, _ in panels] == layers and all(ci is not None for _, _, ci in panels)
    expected = res.aggregated.interactions[1].copy()
    np.fill_diagonal(expected, np.nan)
    np.testing.assert_array_equal(panels[1][1], expected)          # the estimator's layer value, not pooled
    page = write_report(tmp_path).read_text(encoding="utf-8")
    section = page[page.index('<section id="interactions">'):]
    section = section[:section.index("</section>")]
    assert "Σ_c I_ij^(c) / Σ_c V^(c)" in section and "hatched: the interval contains 0" in section
    low, high = res.aggregated.interactions_ci[:, 1, 1, 2]
    assert f"[{low:.3f}, {high:.3f}]" in section or f"[{low:.2f}, {high:.2f}]" in section
