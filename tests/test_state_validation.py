"""A saved accumulator state is read only when it describes what its sums could hold.

A checkpoint's checksum catches damage, not a state crafted (or written by a faulty program) with
a recomputed checksum: progress that claims more blocks than its sums hold, sums of another shape,
NaN sums. Each must be refused with one line, never turned into numbers.
"""

import copy

import numpy as np
import pytest
import torch

from augsense.design import make_design
from augsense.errors import AugsenseError
from augsense.estimators import make_accumulator


def _filled(kind: str = "sobol2", blocks: int = 3, **options):
    design = make_design(kind, [1, 1, 1], 256, seed=3, block_size=8)
    acc = make_accumulator(design, 5, **options)
    w = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for block in design.blocks(0, blocks):
        acc.update(block, torch.sin(torch.as_tensor(block.points) @ w))
    return design, acc


@pytest.mark.parametrize("kind", ["sobol", "sobol2", "shapley-exact", "shapley-permutation"])
def test_an_honest_state_round_trips(kind):
    design, acc = _filled(kind)
    fresh = make_accumulator(design, 5)
    fresh.load_state_dict(copy.deepcopy(acc.state_dict()))
    assert fresh.n == acc.n == 24 and fresh.n_blocks_seen == 3
    a, b = acc.compute(), fresh.compute()
    np.testing.assert_array_equal(a.total_order if kind.startswith("sobol") else a.shapley,
                                  b.total_order if kind.startswith("sobol") else b.shapley)


def _crafted(edit):
    design, acc = _filled()
    state = copy.deepcopy(acc.state_dict())
    edit(state)
    with pytest.raises(AugsenseError) as caught:
        make_accumulator(design, 5).load_state_dict(state)
    return str(caught.value)


def test_progress_claiming_blocks_the_sums_do_not_hold_is_refused():
    def all_done(state):
        state["blocks_seen"][:] = True                  # sums of 3 blocks, flags for all 32
    assert "finished blocks hold 256" in _crafted(all_done)

    def more_rows(state):
        state["n"] = 256
    assert "counts 256 base rows" in _crafted(more_rows)


def test_flags_of_another_length_or_type_are_refused():
    assert "the design has 32 blocks" in _crafted(lambda s: s.update(blocks_seen=s["blocks_seen"][:5]))
    assert "the design has 32 blocks" in _crafted(lambda s: s.update(blocks_seen=s["blocks_seen"].astype(int)))


def test_sums_of_another_shape_missing_or_non_finite_are_refused():
    def shrink(state):
        state["sums"]["c1"] = state["sums"]["c1"][:3]
    assert "state sum 'c1' has shape" in _crafted(shrink)

    def drop(state):
        del state["sums"]["c1"]
    assert "this accumulator keeps" in _crafted(drop)

    def poison(state):
        name = next(k for k, v in state["sums"].items() if k.endswith("2") and v.numel())
        poisoned = state["sums"][name].contiguous().clone()
        poisoned.view(-1)[0] = float("nan")
        state["sums"][name] = poisoned
    assert "holds NaN or inf" in _crafted(poison)

    def bad_shift(state):
        state["shift"][0] = float("inf")
    assert "shift" in _crafted(bad_shift)


def test_other_options_are_named():
    design, acc = _filled(second_order_intervals=False)
    with pytest.raises(AugsenseError, match="second_order_intervals = False in the state"):
        make_accumulator(design, 5).load_state_dict(copy.deepcopy(acc.state_dict()))
