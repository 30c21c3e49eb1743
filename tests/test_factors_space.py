"""FactorSpace (coordinates, order factor, image slot, tables, round trip), bounds, errors, user factors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from augsense.errors import AugsenseError
from augsense.factors import (
    Factor,
    FactorSpace,
    Parameter,
    factor_names,
    get_factor,
    make_factor,
    preset,
    register_factor,
    unregister_factor,
)
from augsense.factors.order import codes_from_permutations, lehmer_codes, permutations_from_codes


def _images(n: int = 4, h: int = 32, w: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(0))


def test_presets_hold_the_papers_factors_and_bounds() -> None:
    assert [f.name for f in preset("paper-set1")] == ["erasing", "sharpness", "rolling", "grayscale", "gaussian_blur"]
    assert [f.name for f in preset("paper-set2")] == [
        "brightness", "contrast", "saturation", "hue", "hflip", "rotation", "elliptic_local_blur"]
    assert len(factor_names()) == 15  # the twelve, and erasing/rolling/rotation_reference
    assert factor_names()[12:] == ["erasing_reference", "rolling_reference", "rotation_reference"]
    erasing = get_factor("erasing")
    assert [(p.low, p.high) for p in erasing.parameters][2:] == [(0.02, 0.33), (math.log(0.3), math.log(3.3))]
    assert (get_factor("contrast").parameters[0].low, get_factor("contrast").parameters[0].high) == (0.01, 3.5)
    assert get_factor("elliptic_local_blur").n_coords == 5
    assert get_factor("hflip").n_coords == 1 and get_factor("hflip").p == 0.5


def test_space_players_dims_and_slices() -> None:
    space = FactorSpace(["hue", "hflip", get_factor("rotation").with_switch(0.3)], random_order=True,
                        image_mode="joint")
    assert space.players == ["hue", "hflip", "rotation", "order", "image"]
    assert space.dims == (1, 1, 2, 1, 1)
    assert space.n_coords == 6
    assert space.order == ["hue", "hflip", "rotation"]
    assert space.coords("rotation") == slice(2, 4)


def test_fixed_order_composes_in_the_recorded_order() -> None:
    images = _images()
    u = torch.rand(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    u[:, 1] = 0.0  # hflip on
    space = FactorSpace(["erasing", "hflip"], order=["hflip", "erasing"])
    u_full = torch.cat([torch.rand(4, 4, dtype=torch.float64), u[:, 1:]], dim=1)
    out = space.apply(images, u_full)
    erase, flip = get_factor("erasing"), get_factor("hflip")
    expected = erase(flip(images, u_full[:, 4:]), u_full[:, :4])
    assert torch.equal(out, expected)
    other = erase(images, u_full[:, :4]).flip(-1)
    assert not torch.equal(out, other)  # the order matters for a non-symmetric erase


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_lehmer_code_covers_all_orders_once(n: int) -> None:
    total = math.factorial(n)
    u = (torch.arange(total, dtype=torch.float64) + 0.5) / total
    perms = permutations_from_codes(lehmer_codes(u, n), n)
    assert {tuple(p) for p in perms.tolist()} == set(itertools.permutations(range(n)))
    assert perms[0].tolist() == list(range(n))  # code 0 = base order
    assert perms[-1].tolist() == list(range(n))[::-1]
    assert torch.equal(codes_from_permutations(perms), torch.arange(total))
    assert lehmer_codes(torch.tensor([1.0]), n).item() == total - 1


def test_random_order_matches_per_sample_composition() -> None:
    names = ["brightness", "hflip", "erasing"]
    space = FactorSpace(names, random_order=True)
    n = 12
    images = _images(n)
    g = torch.Generator().manual_seed(5)
    u = torch.rand(n, space.n_coords, dtype=torch.float64, generator=g)
    u[:, space.coords("order")] = ((torch.arange(n) % 6 + 0.5) / 6).unsqueeze(1).double()
    out = space.apply(images, u)
    perms = space.permutations(u)
    for i in range(n):
        image = images[i:i + 1]
        for j in perms[i].tolist():
            factor = get_factor(names[j])
            image = factor(image, u[i:i + 1, space.coords(names[j])])
        assert torch.equal(out[i:i + 1], image), i
    table = space.parameter_table(u)
    assert table["order"].nunique() == 6
    assert list(table.columns) == ["brightness.factor", "brightness.active", "hflip.active", "erasing.center_y",
                                   "erasing.center_x", "erasing.area", "erasing.log_aspect", "erasing.active",
                                   "order"]


def test_image_index_and_modes() -> None:
    space = FactorSpace(["hue"], image_mode="joint")
    u = torch.tensor([[0.3, 0.0], [0.3, 0.49], [0.3, 0.5], [0.3, 1.0]], dtype=torch.float64)
    assert space.image_index(u, 2).tolist() == [0, 0, 1, 1]
    images = _images(4)
    u2 = u.clone()
    u2[:, 1] = torch.tensor([0.9, 0.1, 0.2, 0.7])
    assert torch.equal(space.apply(images, u), space.apply(images, u2))  # the image coordinate is ignored
    with pytest.raises(AugsenseError, match="joint"):
        FactorSpace(["hue"]).image_index(u[:, :1], 2)


def test_parameter_table_in_factor_units() -> None:
    space = FactorSpace([get_factor("rotation", angle=(-5, 5)), "hflip"])
    u = torch.tensor([[0.0, 0.2], [1.0, 0.8], [0.5, 0.5]], dtype=torch.float64)
    table = space.parameter_table(u)
    assert table["rotation.angle"].tolist() == [-5.0, 5.0, 0.0]
    assert table["hflip.active"].tolist() == [True, False, True]
    assert table["order"].tolist() == ["rotation>hflip"] * 3


def test_space_round_trips_through_dict() -> None:
    space = FactorSpace([get_factor("hue", shift=(-0.1, 0.2)).with_switch(0.25), "grayscale"],
                        order=["grayscale", "hue"], random_order=True, image_mode="joint")
    again = FactorSpace.from_dict(space.to_dict())
    assert again.to_dict() == space.to_dict()
    assert again.factors == space.factors
    u = torch.rand(5, space.n_coords, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    images = _images(5)
    assert torch.equal(space.apply(images, u), again.apply(images, u))


def test_with_bounds_narrows_and_enforces_domain() -> None:
    rotation = get_factor("rotation", angle=(-5, 5))
    params, _ = rotation.parameters_from_unit(torch.tensor([[0.0], [1.0]], dtype=torch.float64))
    assert params.flatten().tolist() == [-5.0, 5.0]
    with pytest.raises(AugsenseError, match="angle"):
        rotation.apply(_images(1), torch.tensor([[7.0]]))
    with pytest.raises(AugsenseError, match=r"-45.0 <= low <= high <= 45.0"):
        get_factor("rotation", angle=(-90, 10))
    with pytest.raises(AugsenseError, match="no parameter"):
        get_factor("rotation", sigma=(0, 1))
    with pytest.raises(AugsenseError, match="pair"):
        get_factor("rotation", angle=3)  # type: ignore[arg-type]


def test_parameters_outside_bounds_are_rejected() -> None:
    images = _images(2)
    with pytest.raises(AugsenseError, match=r"'factor'.*outside its bounds \[0.1, 2.5\]"):
        get_factor("brightness").apply(images, torch.tensor([[1.0], [3.0]]))
    with pytest.raises(AugsenseError, match="NaN"):
        get_factor("hue").apply(images, torch.tensor([[0.0], [float("nan")]]))
    with pytest.raises(AugsenseError, match=r"shape \(2, 5\)"):
        get_factor("elliptic_local_blur").apply(images, torch.zeros(2, 4))


def test_bad_images_give_clear_errors() -> None:
    hue = get_factor("hue")
    params = torch.zeros(2, 1)
    with pytest.raises(AugsenseError, match="3 \\(RGB\\) channels"):
        hue.apply(torch.rand(2, 1, 8, 8), params)
    with pytest.raises(AugsenseError, match="unsqueeze"):
        hue.apply(torch.rand(3, 8, 8), params)
    with pytest.raises(AugsenseError, match="float\\(\\) / 255"):
        hue.apply(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), params)
    with pytest.raises(AugsenseError, match="torch.Tensor"):
        hue.apply([[0.0]], params)  # type: ignore[arg-type]
    with pytest.raises(AugsenseError, match="one row per image"):
        hue.apply(torch.rand(3, 3, 8, 8), params)
    space = FactorSpace(["hue"])
    with pytest.raises(AugsenseError, match=r"lie in \[0, 1\]"):
        space.apply(torch.rand(2, 3, 8, 8) * 2 - 1, torch.zeros(2, 1, dtype=torch.float64))
    with pytest.raises(AugsenseError, match=r"u must have shape \(2, 1\)"):
        space.apply(torch.rand(2, 3, 8, 8), torch.zeros(2, 3))
    with pytest.raises(AugsenseError, match=r"u must lie in \[0, 1\]"):
        space.apply(torch.rand(2, 3, 8, 8), torch.full((2, 1), 1.5))


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(AugsenseError, match="unknown factor 'blurr'.*gaussian_blur"):
        get_factor("blurr")
    with pytest.raises(AugsenseError, match="paper-set1"):
        preset("paper-set3")
    with pytest.raises(AugsenseError, match="unknown factor 'nope'.*register_factor"):
        FactorSpace(["hue", "nope"])
    with pytest.raises(AugsenseError, match="more than once"):
        FactorSpace(["hue", "hue"])
    with pytest.raises(AugsenseError, match="exactly once"):
        FactorSpace(["hue", "hflip"], order=["hue"])


def _solarize(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Invert the pixels above each sample's threshold (n,) — a batched user function."""
    threshold = params[:, 0].view(-1, 1, 1, 1)
    return torch.where(images >= threshold, 1.0 - images, images)


def test_user_defined_factor_works_like_a_builtin() -> None:
    solarize = make_factor("solarize", [("threshold", 0.5, 1.0)], _solarize, switch=True, p=0.7)
    assert isinstance(solarize, Factor) and solarize.n_coords == 2
    assert solarize.parameters == (Parameter("threshold", 0.5, 1.0),)
    images = _images(3)
    params = torch.tensor([[0.5], [0.75], [1.0]])
    out = solarize.apply(images, params)
    for i in range(3):
        expected = images[i].clone()
        expected[expected >= float(params[i, 0])] = 1.0 - expected[expected >= float(params[i, 0])]
        assert torch.equal(out[i], expected)
    with pytest.raises(AugsenseError, match="threshold"):
        solarize.apply(images, torch.tensor([[0.1], [0.75], [1.0]]))
    space = FactorSpace([solarize, "hflip"], random_order=True)
    assert space.players == ["solarize", "hflip", "order"]
    u = torch.rand(3, space.n_coords, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert space.apply(images, u).shape == images.shape
    with pytest.raises(AugsenseError, match="register_factor"):
        FactorSpace.from_dict(space.to_dict())
    register_factor(solarize)
    try:
        assert "solarize" in factor_names()
        again = FactorSpace.from_dict(space.to_dict())
        assert torch.equal(again.apply(images, u), space.apply(images, u))
        with pytest.raises(AugsenseError, match="already registered"):
            register_factor(solarize)
    finally:
        unregister_factor("solarize")
    with pytest.raises(AugsenseError, match="built-in"):
        register_factor(make_factor("hue", [], _solarize))


def test_user_factor_returning_a_wrong_shape_is_reported() -> None:
    bad = make_factor("crop_half", [], lambda images, params: images[..., ::2, :])
    with pytest.raises(AugsenseError, match="must return a tensor of the input's shape"):
        bad.apply(_images(2), torch.zeros(2, 0))


def test_log_parameter_is_log_uniform() -> None:
    factor = make_factor("zoomish", [Parameter("ratio", 0.25, 4.0, log=True)], lambda im, p: im)
    params, active = factor.parameters_from_unit(torch.tensor([[0.0], [0.5], [1.0]], dtype=torch.float64))
    torch.testing.assert_close(params.flatten(), torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64))
    assert active.all()


def test_space_apply_is_deterministic_under_inference_mode() -> None:
    space = FactorSpace(preset("paper-set1") + preset("paper-set2"), random_order=True)
    images = _images(8, 40, 40)
    u = torch.rand(8, space.n_coords, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        a = space.apply(images, u)
        b = space.apply(images, u)
    assert torch.equal(a, b) and not torch.equal(a, images)
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_random_order_with_idle_rows_matches_per_sample_composition() -> None:
    """Switches off at some steps leave rows in earlier factors' outputs: the composed batch is still each row's own
    composition, and the caller's images are not written."""
    factors = [f.with_switch(0.5) for f in preset("paper-set1")]
    space = FactorSpace(factors, random_order=True)
    n = 16
    images = _images(n, 24, 24)
    before = images.clone()
    u = torch.rand(n, space.n_coords, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    out = space.apply(images, u)
    assert torch.equal(images, before)
    perms = space.permutations(u)
    for i in range(n):
        image = images[i:i + 1]
        for j in perms[i].tolist():
            factor = factors[j]
            image = factor(image, u[i:i + 1, space.coords(factor.name)])
        assert torch.equal(out[i:i + 1], image), i
