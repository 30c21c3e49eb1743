"""The Sobol accumulator keeps its per-output sums stat-major inside (outputs last, issue #17) but its
state stays output-major, layout 3: the same keys and shapes, the same row and block sums as their
definition, and states that save, load and merge to the one-pass results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from augsense.design import make_design
from augsense.estimators import make_accumulator
from augsense.estimators._delta import block_outer

D, M = 3, 11
CASES = [("sobol", "pooled", False, True), ("sobol", "paired", False, True), ("sobol", "pooled", True, True),
         ("sobol", "paired", True, True), ("sobol2", "pooled", False, True), ("sobol2", "paired", False, True),
         ("sobol2", "pooled", True, True), ("sobol2", "paired", True, True), ("sobol2", "pooled", True, False),
         ("sobol2", "paired", False, False)]
IDS = [f"{k}-{den}-{'groups' if g else 'nogroups'}{'' if s else '-no-s2-intervals'}" for k, den, g, s in CASES]
FIELDS = ("mean", "variance", "first_order", "total_order", "first_order_ci", "total_order_ci", "second_order",
          "second_order_ci", "first_order_variance", "total_order_variance")


def outputs(block, seed: int = 0) -> torch.Tensor:
    """Outputs (r, G, M) with interactions, unequal scales and large offsets (the shift matters)."""
    x = torch.as_tensor(block.points)
    w = torch.randn(x.shape[-1], M, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.sin(3 * x) @ w + x[..., :1] * x[..., -1:] * torch.arange(1, M + 1) + 1e3 * torch.arange(M)


def accumulator(kind: str, denominator: str, grouped: bool, intervals: bool, blocks=None):
    design = make_design(kind, [1] * D, 64, seed=7, block_size=8)
    options = {"denominator": denominator, "groups": torch.arange(M) % 3 if grouped else None}
    if kind == "sobol2":
        options["second_order_intervals"] = intervals
    acc = make_accumulator(design, M, **options)
    for k in range(design.n_blocks) if blocks is None else blocks:
        acc.update(design.block(k), outputs(design.block(k)))
    return acc


def saved(state: dict) -> dict:
    """A state as a file gives it back: contiguous copies, sharing nothing with the accumulator."""
    return state | {"sums": {k: v.contiguous().clone() for k, v in state["sums"].items()}}


def definition_sums(acc) -> dict[str, torch.Tensor]:
    """The per-output sums (output-major) from their definition, block by block: row sums of the
    statistics, and of each block sum its outer product [triangle, cell x shared] (see ``_delta``)."""
    design, d, pooled = acc.design, D, acc.denominator == "pooled"
    i, j = torch.triu_indices(d, d, 1)
    out: dict[str, torch.Tensor] = {}

    def add(name, x):
        out[name] = out.get(name, 0) + x

    for k in range(design.n_blocks):
        v = outputs(design.block(k)) - acc.shift                         # (r, G, M)
        a, b, ab = v[:, 0, :, None], v[:, 1, :, None], v[:, 2:2 + d].transpose(1, 2)   # (r, M, 1|d)
        Dif = ab - a
        first = (b if pooled else (b - a) - 0.5 * Dif) * Dif
        cells = torch.stack([first, Dif, 0.5 * Dif * Dif], -1).sum(0)    # (M, d, 3)
        den = [0.5 * (a * a + b * b), a + b] if pooled else [0.5 * (a - b) ** 2]
        w = torch.cat(den, -1).sum(0)                                    # (M, q)
        add("role", v.sum(0).T)
        add("w1", w)
        add("w2", block_outer(w))
        add("c1", cells)
        add("c2", block_outer(cells, w))
        if design.kind == "sobol2":
            ba = v[:, 2 + d:].transpose(1, 2)
            y = ba[..., i] * ab[..., j] - a * b - b * Dif[..., i] - b * Dif[..., j]
            t = ba[..., i] + ab[..., j] - a - b - Dif[..., i] - Dif[..., j]
            pairs = torch.stack([y, t], -1).sum(0)                       # (M, P, 2)
            add("p1", pairs)
            if acc.second_order_intervals:
                add("p2", block_outer(pairs, w))
    return out


@pytest.mark.parametrize("kind,denominator,grouped,intervals", CASES, ids=IDS)
def test_state_keeps_the_output_major_layout_3(kind, denominator, grouped, intervals):
    acc = accumulator(kind, denominator, grouped, intervals, blocks=[0])
    state = acc.state_dict()
    d, G, q, P = D, acc.design.group_size, 2 if denominator == "pooled" else 1, D * (D - 1) // 2
    expected = {"role": (M, G), "w1": (M, q), "w2": (M, q * (q + 1) // 2), "c1": (M, d, 3), "c2": (M, d, 6 + 3 * q)}
    if kind == "sobol2":
        expected["p1"] = (M, P, 2)
        if intervals:
            expected["p2"] = (M, P, 3 + 2 * q)
    if grouped:
        expected |= {"g1": (3, d, 3), "g2": (3, d, 6)}
        if kind == "sobol2":
            expected |= {"gp1": (3, P, 2), "gp2": (3, P, 3)}
    assert state["layout"] == 3
    assert {k: tuple(v.shape) for k, v in state["sums"].items()} == expected
    assert all(v.dtype == torch.float64 for v in state["sums"].values())


@pytest.mark.parametrize("kind,denominator,grouped,intervals", CASES, ids=IDS)
def test_state_sums_are_their_row_and_block_definition(kind, denominator, grouped, intervals):
    acc = accumulator(kind, denominator, grouped, intervals)
    sums = acc.state_dict()["sums"]
    for name, expected in definition_sums(acc).items():
        np.testing.assert_allclose(sums[name], expected, rtol=1e-11, atol=1e-11 * float(expected.abs().max()),
                                   err_msg=name)


@pytest.mark.parametrize("kind,denominator,grouped,intervals", CASES, ids=IDS)
def test_saved_loaded_and_merged_states_give_the_one_pass_results(kind, denominator, grouped, intervals):
    whole = accumulator(kind, denominator, grouped, intervals)
    n_blocks = whole.design.n_blocks
    shards = [accumulator(kind, denominator, grouped, intervals, blocks=range(r, n_blocks, 3)) for r in range(3)]
    assert not torch.equal(shards[0].shift, shards[1].shift)   # the merge re-expresses sums in another shift
    loaded = []
    for shard in shards:
        state = saved(shard.state_dict())
        fresh = accumulator(kind, denominator, grouped, intervals, blocks=[])
        fresh.load_state_dict(state)
        again = fresh.state_dict()
        assert all(torch.equal(again["sums"][k], v) for k, v in state["sums"].items())
        for v in state["sums"].values():   # the loaded sums are copies: the state may be reused or freed
            v.fill_(np.nan)
        loaded.append(fresh)
    for part in loaded[1:]:
        loaded[0].merge(part)
    one, merged = whole.compute(), loaded[0].compute()
    for res_one, res_merged in [(one, merged)] + ([(one.aggregated, merged.aggregated)] if grouped else []):
        for name in FIELDS:
            a, b = getattr(res_one, name, None), getattr(res_merged, name, None)
            if a is None:
                assert b is None
                continue
            assert np.isfinite(a).any() or name.startswith("second_order")
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=name)
    merged_state, whole_state = loaded[0].state_dict()["sums"], whole.state_dict()["sums"]
    assert merged_state.keys() == whole_state.keys()
    if torch.equal(loaded[0].shift, whole.shift):
        for k, v in whole_state.items():
            np.testing.assert_allclose(merged_state[k], v, rtol=1e-9, atol=1e-9 * float(v.abs().max()), err_msg=k)
