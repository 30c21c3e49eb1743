"""Pick-freeze designs: layouts, block regeneration, grouping, fingerprints, bad input."""

import numpy as np
import pytest
from scipy.stats import qmc

from augsense.design import make_design
from augsense.design.core import Design
from augsense.errors import AugsenseError


def test_each_block_is_its_own_scrambled_sobol_net():
    design = make_design("sobol", [1, 2], 512, seed=5, block_size=16)
    pts = np.concatenate([b.points for b in design.blocks()])
    assert pts.shape == (512, 4, 3)
    for k in range(4):
        own = qmc.Sobol(6, scramble=True, seed=np.random.default_rng([5, k, 0])).random(16)
        np.testing.assert_array_equal(design.block(k).points[:, 0], own[:, :3])
        np.testing.assert_array_equal(design.block(k).points[:, 1], own[:, 3:])
        # a balanced net: each half of every coordinate holds exactly half of the block's points
        assert ((own < 0.5).sum(0) == 8).all()
    np.testing.assert_array_equal(np.concatenate([b.base_rows for b in design.blocks()]), np.arange(512))


def test_block_size_is_rounded_down_to_a_power_of_two():
    design = make_design("sobol", [1] * 4, 4096, seed=3, block_size=73)
    assert design.block_size == 64 and design.n_blocks == 64
    assert make_design("sobol", [1], 1024, block_size=100).block_size == 32   # >= 32 blocks
    assert make_design("sobol", [1], 8, block_size=100).block_size == 1       # tiny n: one row per block


def test_permutation_designs_have_at_least_8_longer_blocks_other_kinds_32():
    """Permutation walks trade replicates for longer scrambled nets (t_7 intervals); other kinds keep 32."""
    for n, rows in ((8, 1), (64, 8), (512, 64), (4096, 64)):
        design = make_design("shapley-permutation", [1] * 3, n, block_size=64)
        assert design.block_size == rows and design.n_blocks == n // rows and design.min_blocks == 8
    assert make_design("shapley-permutation", [1] * 3, 256, block_size=1000).n_blocks == 8
    for kind in ("sobol", "sobol2", "shapley-exact"):
        design = make_design(kind, [1] * 3, 256, block_size=1000)
        assert design.n_blocks == 32 and design.min_blocks == 32 and "min_blocks" not in design.to_dict()


def test_permutation_design_from_an_older_version_is_refused_by_name():
    design = make_design("shapley-permutation", [1] * 3, 512, block_size=1000)
    assert design.to_dict()["min_blocks"] == 8 and Design.from_dict(design.to_dict()) == design
    old = {k: v for k, v in design.to_dict().items() if k != "min_blocks"} | {"block_size": 16}
    with pytest.raises(AugsenseError, match="at least 32 blocks of rows, this version at least 8.*start the run again"):
        Design.from_dict(old)


def test_blocks_are_independent_replicates():
    """Block means of a smooth function are uncorrelated across blocks (one randomisation each)."""
    design = make_design("sobol", [1, 1], 4096, seed=1, block_size=16)
    means = np.array([b.points[:, 0].sum(1).mean() for b in design.blocks()])
    assert abs(np.corrcoef(means[:-1], means[1:])[0, 1]) < 0.2
    assert abs(means.mean() - 1.0) < 0.01


def test_block_regenerated_from_seed_and_index_alone():
    a = make_design("shapley-permutation", [1, 1, 3], 128, seed=9, block_size=64)
    b = make_design("shapley-permutation", [1, 1, 3], 128, seed=9, block_size=64)
    for _ in a.blocks():
        pass
    np.testing.assert_array_equal(a.block(2).points, b.block(2).points)
    np.testing.assert_array_equal(a.block(2).permutations, b.block(2).permutations)
    assert [blk.index for blk in a.blocks(1, 9, 2)] == [1, 3, 5, 7] and a.n_blocks == 8   # 16-row blocks


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
    design = make_design("shapley-permutation", [1, 1, 1, 1], 512, seed=4, block_size=16)
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
    with pytest.raises(AugsenseError, match="blocks 0..31"):
        make_design("sobol", [1], 512, block_size=256).block(32)


@pytest.mark.parametrize("n_images", [2, 3, 4, 20, 25, 64])
def test_images_are_paired_with_rows_independently_of_the_points(n_images):
    """Each image sees both halves of every coordinate (row mod n_images gave shares of 0 and 1)."""
    design = make_design("sobol", [1] * 4, 4096, seed=3, block_size=73)
    rows = np.concatenate([b.base_rows for b in design.blocks()])
    points = np.concatenate([b.points[:, :2] for b in design.blocks()])       # A and B, (n, 2, 4)
    image = design.image_of(rows, n_images)
    counts = np.bincount(image, minlength=n_images)
    assert counts.max() - counts.min() <= 1                                   # balanced
    for j in range(n_images):
        share = (points[image == j] <= 0.5).mean(0)                          # (2, 4)
        # binomial spread of a share over counts[j] rows, 4.5 sigma over all images and coordinates
        assert np.abs(share - 0.5).max() < 4.5 * 0.5 / np.sqrt(counts[j]), (j, share)


def test_fewer_rows_than_images_use_a_random_subset():
    used = {int(i) for seed in range(20) for i in make_design("sobol", [1], 8, seed=seed).image_of(np.arange(8), 20)}
    assert len(used) > 15   # not always images 0..7
