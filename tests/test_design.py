"""Pick-freeze designs: layouts, block regeneration, grouping, fingerprints, bad input."""

import numpy as np
import pytest
from scipy.stats import qmc

from augsense.design import make_design
from augsense.design.core import Design
from augsense.errors import AugsenseError


def test_blocks_are_the_scrambled_sobol_sequence_split_into_pieces():
    design = make_design("sobol", [1, 2], 64, seed=5, block_size=16)
    whole = qmc.Sobol(6, scramble=True, seed=5).random(64)
    pts = np.concatenate([b.points for b in design.blocks()])
    assert pts.shape == (64, 4, 3)
    np.testing.assert_array_equal(pts[:, 0], whole[:, :3])
    np.testing.assert_array_equal(pts[:, 1], whole[:, 3:])
    np.testing.assert_array_equal(np.concatenate([b.base_rows for b in design.blocks()]), np.arange(64))


def test_block_regenerated_from_seed_and_index_alone():
    a = make_design("shapley-permutation", [1, 1, 3], 128, seed=9, block_size=32)
    b = make_design("shapley-permutation", [1, 1, 3], 128, seed=9, block_size=32)
    for _ in a.blocks():
        pass
    np.testing.assert_array_equal(a.block(2).points, b.block(2).points)
    np.testing.assert_array_equal(a.block(2).permutations, b.block(2).permutations)
    assert [blk.index for blk in a.blocks(1, None, 2)] == [1, 3]


def test_pick_freeze_layout_swaps_whole_players():
    dims = (2, 1, 3)
    design = make_design("sobol2", dims, 8, seed=1)
    p = design.block(0).points
    A, B = p[:, 0], p[:, 1]
    owner = np.repeat(np.arange(3), dims)
    for i in range(3):
        np.testing.assert_array_equal(p[:, 2 + i], np.where(owner == i, B, A))
        np.testing.assert_array_equal(p[:, 5 + i], np.where(owner == i, A, B))
    assert design.roles[:3] == ["A", "B", "AB_0"] and design.group_size == 8


def test_shapley_exact_hybrids_are_bitmasks_of_players_from_a():
    design = make_design("shapley-exact", [1, 2], 4, seed=2)
    p = design.block(0).points
    A, B = p[:, 3], p[:, 0]
    np.testing.assert_array_equal(p[:, 1], np.concatenate([A[:, :1], B[:, 1:]], 1))   # g=1: player 0 from A
    np.testing.assert_array_equal(p[:, 2], np.concatenate([B[:, :1], A[:, 1:]], 1))


def test_permutation_walk_switches_one_player_at_a_time_from_a_to_b():
    design = make_design("shapley-permutation", [1, 1, 1, 1], 16, seed=4, block_size=16)
    blk = design.block(0)
    p = blk.points
    for row in range(16):
        for k in range(1, 5):
            changed = np.flatnonzero(p[row, k] != p[row, k - 1])
            assert changed.tolist() == [blk.permutations[row, k - 1]]
    assert not np.array_equal(p[:, 0], p[:, -1])


def test_fingerprint_and_dict_round_trip():
    design = make_design("sobol", [1, 1], 32, seed=3, block_size=8)
    again = Design.from_dict(design.to_dict())
    assert again.fingerprint() == design.fingerprint() and again == design
    assert make_design("sobol", [1, 1], 32, seed=4, block_size=8).fingerprint() != design.fingerprint()


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="sobol", dims=[1], n=100), "power of two"),
    (dict(kind="nope", dims=[1], n=8), "unknown design kind"),
    (dict(kind="sobol", dims=[], n=8), "at least one player"),
    (dict(kind="shapley-exact", dims=[1] * 13, n=8), "shapley-permutation"),
])
def test_bad_designs_are_refused_with_advice(kwargs, message):
    with pytest.raises(AugsenseError, match=message):
        make_design(**kwargs)


def test_missing_block_is_an_error():
    with pytest.raises(AugsenseError, match="blocks 0..1"):
        make_design("sobol", [1], 16, block_size=8).block(2)
