"""Per-element memory: the bytes-per-output formulas against the real tensors, chunked compute,
the shared denominator sums (layout 2) through merge and resume, and refusal of older states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import augsense.estimators._accumulator as accumulator_module
from augsense.design import make_design
from augsense.errors import AugsenseError
from augsense.estimators import make_accumulator
from augsense.estimators.contrast import ContrastAccumulator
from augsense.estimators._delta import block_outer, join_shared, split_shared
from augsense.estimators.memory import bytes_table, result_bytes_per_output, state_bytes_per_output, state_floats

DESIGN_KINDS = [("sobol", "pooled"), ("sobol", "paired"), ("sobol2", "pooled"), ("sobol2", "paired"),
                ("shapley-exact", "pooled"), ("shapley-permutation", "pooled")]


def outputs(block, m: int, seed: int = 0) -> torch.Tensor:
    """Smooth outputs (r, G, m) with interactions and a large offset (exact shifts matter)."""
    x = torch.as_tensor(block.points)
    w = torch.randn(x.shape[-1], m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.sin(3 * x) @ w + x[..., :1] * x[..., -1:] * torch.arange(1, m + 1) + 1e3


def filled(kind: str, denominator: str, d: int, m: int, blocks=None, groups=None):
    design = make_design(kind, [1] * d, 64, seed=5, block_size=8)
    acc = make_accumulator(design, m, denominator=denominator, groups=groups)
    for k in (range(design.n_blocks) if blocks is None else blocks):
        block = design.block(k)
        acc.update(block, outputs(block, m))
    return acc


@pytest.mark.parametrize("kind,denominator", DESIGN_KINDS)
@pytest.mark.parametrize("d", [1, 3, 5])
def test_state_bytes_formula_equals_the_state_tensors_nbytes(kind, denominator, d):
    if kind == "sobol2" and d == 1:
        pytest.skip("second order needs two factors")
    m = 7
    acc = filled(kind, denominator, d, m, blocks=[0], groups=torch.arange(m) % 2)
    sums = acc.state_dict()["sums"]   # output-major, as saved (inside, the per-output sums are stat-major)
    per_output = {k: v for k, v in sums.items() if not k.startswith("g")}   # g1, g2: per group
    assert all(v.shape[0] == m and v.dtype == torch.float64 for v in per_output.values())
    actual = {k: v[0].numel() for k, v in per_output.items()} | {"shift": acc.shift.numel() // m}
    assert actual == state_floats(kind, d, denominator=denominator)
    nbytes = sum(v.nbytes for v in per_output.values()) + acc.shift.nbytes
    assert state_bytes_per_output(kind, d, denominator=denominator) * m == nbytes


@pytest.mark.parametrize("kind,denominator", DESIGN_KINDS)
def test_result_bytes_formula_equals_the_result_arrays_nbytes(kind, denominator):
    d, m = 3, 6
    res = filled(kind, denominator, d, m).compute()
    arrays = [v for v in vars(res).values() if isinstance(v, np.ndarray)]
    assert sum(a.nbytes for a in arrays) == result_bytes_per_output(kind, d) * m


def test_contrast_bytes_formulas_equal_its_tensors():
    m = 5
    acc = ContrastAccumulator(m, keep_differences=False)
    acc.update(torch.randn(4, m), torch.randn(4, m))
    state = [v for v in vars(acc).values() if isinstance(v, torch.Tensor)]
    assert sum(v.nbytes for v in state) == state_bytes_per_output("contrast", 1) * m
    res = acc.compute()
    arrays = [v for v in vars(res).values() if isinstance(v, np.ndarray)]
    assert sum(a.nbytes for a in arrays) == result_bytes_per_output("contrast", 1) * m


def test_bytes_table_for_the_paper_run_and_bad_input():
    rows = {r["estimator"]: r for r in bytes_table(7)}
    # paper-set1 + order + image: sobol2 keeps 316 float64 per output (451 before the shared denominator)
    assert rows["sobol2 (pooled)"]["state_bytes"] == 8 * 316
    assert rows["sobol (paired)"]["state_bytes"] < rows["sobol (pooled)"]["state_bytes"]
    with pytest.raises(AugsenseError, match="unknown estimator"):
        state_bytes_per_output("sobol3", 3)
    with pytest.raises(AugsenseError, match="at least one factor"):
        state_floats("sobol", 0)


def test_join_and_split_of_shared_sums_are_inverse_and_match_the_full_outer_product():
    g = torch.Generator().manual_seed(1)
    for a, q, k in ((3, 2, 4), (2, 1, 3), (3, 1, 0)):
        cells, shared = torch.randn(5, k, a, generator=g, dtype=torch.float64), torch.randn(5, q, generator=g,
                                                                                                dtype=torch.float64)
        s2, w2 = block_outer(cells, shared), block_outer(shared)
        full1, full2 = join_shared(cells, s2, shared, w2)
        assert torch.equal(full2, block_outer(torch.cat([cells, shared[:, None].expand(5, k, q)], -1)))
        back = split_shared(full1, full2, q)
        assert torch.equal(back[0], cells) and torch.equal(back[1], s2)
        if k:
            assert torch.equal(back[2], shared) and torch.equal(back[3], w2)


@pytest.mark.parametrize("kind,denominator", DESIGN_KINDS)
def test_compute_in_many_output_chunks_equals_one_chunk(kind, denominator, monkeypatch):
    m = 11
    acc = filled(kind, denominator, 3, m, groups=torch.arange(m) % 3)
    whole = acc.compute()
    monkeypatch.setattr(accumulator_module, "COMPUTE_CHUNK_ELEMENTS", 1)   # one output per chunk
    chunked = acc.compute()
    for name, value in vars(whole).items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, getattr(chunked, name), err_msg=name)
    np.testing.assert_array_equal(whole.aggregated.variance, chunked.aggregated.variance)


@pytest.mark.parametrize("denominator", ["pooled", "paired"])
def test_shards_with_other_shifts_merge_to_the_whole_through_the_shared_sums(denominator):
    # each shard's shift is the mean of its first block, so merging re-expresses the shared sums
    m, d = 4, 4
    whole = filled("sobol2", denominator, d, m).compute()
    n_blocks = make_design("sobol2", [1] * d, 64, seed=5, block_size=8).n_blocks
    parts = [filled("sobol2", denominator, d, m, blocks=range(r, n_blocks, 3)) for r in range(3)]
    assert not torch.equal(parts[0].shift, parts[1].shift)
    for part in parts[1:]:
        parts[0].merge(part)
    merged = parts[0].compute()
    for name in ("first_order", "total_order", "second_order", "first_order_ci", "second_order_ci"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=1e-9, atol=1e-12,
                                   equal_nan=True, err_msg=name)


def test_a_state_in_the_earlier_layout_is_refused_by_name():
    acc = filled("sobol2", "pooled", 3, 2, blocks=[0])
    state = acc.state_dict()
    assert state["layout"] == 3
    old = dict(state)
    old.pop("layout")   # states of earlier versions carry no layout: layout 1, the denominator in every cell
    fresh = make_accumulator(acc.design, 2)
    with pytest.raises(AugsenseError, match="layout 1 of an earlier augsense"):
        fresh.load_state_dict(old)
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.sums[k], v) for k, v in acc.sums.items())


def test_resuming_a_checkpoint_with_sums_of_the_earlier_layout_is_refused_with_its_path(tmp_path):
    from types import SimpleNamespace

    from augsense.blockset import BlockSet
    from augsense.io.checkpoints import resume_run_checkpoint, save_checkpoint

    acc = filled("sobol2", "paired", 3, 2, blocks=[0, 1])
    plan = SimpleNamespace(fingerprint="plan", refusal=lambda other: "another plan")
    old = acc.state_dict()
    old.pop("layout")
    path = tmp_path / "checkpoint.pt"
    done = BlockSet.from_mask(old["blocks_seen"]).ranges
    save_checkpoint(path, {"fingerprint": "plan", "plan": {}, "done": done, "accumulator": old, "world_size": 1})
    fresh = make_accumulator(acc.design, 2, denominator="paired")
    with pytest.raises(AugsenseError, match=r"checkpoint .* cannot be resumed: state has sums in layout 1"):
        resume_run_checkpoint(path, plan=plan, accumulator=fresh)
    save_checkpoint(path, {"fingerprint": "plan", "plan": {}, "done": done, "accumulator": acc.state_dict(),
                           "world_size": 1})
    assert resume_run_checkpoint(path, plan=plan, accumulator=fresh) == BlockSet.from_mask(old["blocks_seen"])
    np.testing.assert_array_equal(fresh.compute().second_order, acc.compute().second_order)


def test_the_closed_forms_in_docs_scale_equal_the_formulas():
    for d in range(1, 11):
        P = d * (d - 1) // 2
        closed = {("sobol", "pooled"): 16 * d + 8, ("sobol", "paired"): 13 * d + 5,
                  ("sobol2", "pooled"): 17 * d + 9 * P + 8, ("sobol2", "paired"): 14 * d + 7 * P + 5,
                  ("shapley-exact", "pooled"): 5 * d + 5 * P + 2 ** d + 2, ("shapley-permutation", "pooled"): 5 * d + 2,
                  ("contrast", "pooled"): 6}
        for (kind, denominator), floats in closed.items():
            assert sum(state_floats(kind, d, denominator=denominator).values()) == floats, (kind, denominator, d)


@pytest.mark.parametrize("denominator", ["pooled", "paired"])
def test_without_second_order_intervals_the_estimates_stay_and_merge_and_the_pair_moments_go(denominator):
    m, d = 3, 4
    design = make_design("sobol2", [1] * d, 64, seed=5, block_size=8)
    full = filled("sobol2", denominator, d, m)

    def lean(blocks):
        acc = make_accumulator(design, m, denominator=denominator, second_order_intervals=False)
        for k in blocks:
            acc.update(design.block(k), outputs(design.block(k), m))
        return acc

    parts = [lean(range(r, design.n_blocks, 3)) for r in range(3)]   # other shifts: the reshift without p2
    for part in parts[1:]:
        parts[0].merge(part)
    assert "p2" not in parts[0].sums
    assert parts[0].sums["p1"].nbytes + sum(v.nbytes for k, v in parts[0].sums.items() if k != "p1") + \
        parts[0].shift.nbytes == m * state_bytes_per_output("sobol2", d, denominator=denominator,
                                                            second_order_intervals=False)
    a, b = full.compute(), parts[0].compute()
    for name in ("first_order", "total_order", "second_order", "first_order_ci", "total_order_ci"):
        np.testing.assert_allclose(b.__dict__[name], a.__dict__[name], rtol=1e-9, atol=1e-12, equal_nan=True)
    assert np.isnan(b.second_order_ci).all() and np.isfinite(a.second_order_ci[:, :, 0, 1]).all()
    with pytest.raises(AugsenseError, match="options"):
        full.merge(parts[0])
    with pytest.raises(AugsenseError, match="true or false"):
        make_accumulator(design, m, second_order_intervals="no")


def test_sobol_indices_without_second_order_intervals():
    from augsense.estimators.api import sobol_indices

    def f(x):
        return x[:, 0] + 2 * x[:, 1] * x[:, 2]

    kept = sobol_indices(f, [[0, 1]] * 3, 256, second_order=True)
    lean = sobol_indices(f, [[0, 1]] * 3, 256, second_order=True, second_order_intervals=False)
    np.testing.assert_array_equal(lean.second_order, kept.second_order)
    assert np.isnan(lean.second_order_ci).all() and kept.second_order_ci[0, 0, 1, 2] < kept.second_order[0, 1, 2]


def test_a_run_with_second_order_intervals_off_keeps_s2_and_drops_its_intervals(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from planted import PLANTED_CONFIG, planted_bundle, planted_images

    from augsense.analyses.sensitivity import run_sensitivity
    from augsense.config import SensitivityConfig

    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    config = SensitivityConfig(**values, estimator="sobol2", n=32, second_order_intervals=False)
    assert "second_order_intervals = false" in config.to_toml()
    runs = [run_sensitivity(c, model=planted_bundle(), images=planted_images(16), progress=False)
            for c in (config, SensitivityConfig(**values, estimator="sobol2", n=32))]
    lean, kept = (run.result for run in runs)
    np.testing.assert_array_equal(lean.second_order, kept.second_order)
    assert np.isnan(lean.second_order_ci).all() and np.isfinite(kept.second_order_ci[:, ~kept.dead, 0, 1]).all()
