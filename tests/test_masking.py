"""Guided masking: mask rules, batched masked forward, and the planted network's known answer."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from augsense.analyses.masking import MaskingOptions, build_masks, run_masking
from augsense.analyses.sensitivity import run_sensitivity
from augsense.config import SensitivityConfig
from augsense.errors import AugsenseError
from augsense.io.images import ImageSet
from augsense.io.results import load_run
from augsense.probe.masks import (MaskedForward, channels_last_copy, heap_allocations, least_units, quantile_units,
                                  random_units, selection_multiplier, soft_multiplier)
from planted import PLANTED, PLANTED_CONFIG, planted_bundle, planted_images

FACTORS = ["brightness", "saturation", "hflip"]


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images", "layers")}
    out = tmp_path_factory.mktemp("planted_mask")
    run_sensitivity(SensitivityConfig(**values, layers=["readout", "output"], n=128), model=planted_bundle(),
                    images=planted_images(), out_dir=out, progress=False)
    return out


def test_quantile_least_random_selections():
    values = np.array([0.9, np.nan, 0.1, 0.5, 0.3, 0.7])
    chosen = quantile_units(values, 0.6)  # finite values 0.1 0.3 0.5 0.7 0.9: 0.6-quantile = 0.58
    assert chosen.tolist() == [True, False, False, False, False, True]
    assert quantile_units(values, 0.0).sum() == 5 and not quantile_units(values, 0.0)[1]
    assert least_units(values, 2).tolist() == [False, False, True, False, True, False]
    rng = np.random.default_rng(0)
    for _ in range(20):
        drawn = random_units(values, 3, rng)
        assert drawn.sum() == 3 and not drawn[1]
    assert selection_multiplier(chosen, 1.5).tolist() == [1.5, 1, 1, 1, 1, 1.5]
    soft = soft_multiplier(np.array([-0.2, 0.4, 1.3, np.nan]))
    assert soft.tolist() == pytest.approx([0.0, 0.4, 1.0, 0.0])
    assert soft_multiplier(np.array([0.4]), inverse=True).tolist() == pytest.approx([0.6])


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_quantile_out_of_range(bad):
    with pytest.raises(AugsenseError, match="quantile"):
        quantile_units(np.ones(3), bad)


@pytest.mark.parametrize("bad", [-1.0, math.inf, 1e6])
def test_alpha_out_of_range(bad):
    with pytest.raises(AugsenseError, match="α"):
        selection_multiplier(np.ones(3, dtype=bool), bad)


class Residual(nn.Module):
    """conv → block (masked) → add a skip from before the block: forces the repeat-the-input fallback."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head((self.block(h) + h).mean(dim=(2, 3)))


class Chain(nn.Sequential):
    def __init__(self) -> None:
        torch.manual_seed(1)
        super().__init__(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Flatten(), nn.LazyLinear(7))


@pytest.mark.parametrize("model_cls, layers, expanded", [(Chain, {"0": (4,), "2": (5, 6, 6)}, True),
                                                          (Residual, {"block": (4,)}, False)])
def test_batched_masks_equal_one_configuration_at_a_time(model_cls, layers, expanded):
    model = model_cls().eval()
    x = torch.rand(3, 3, 8, 8)
    model(x)  # materialise lazy layers
    generator = torch.Generator().manual_seed(2)
    bank = {name: torch.rand((4,) + shape, generator=generator) * 2 for name, shape in layers.items()}
    with torch.inference_mode(), MaskedForward(model, bank) as masked:
        together = masked(x)
    assert together.shape == (4, 3, model(x).shape[1])
    assert masked.expand_inside is expanded
    for k in range(4):
        with torch.inference_mode(), MaskedForward(model, {n: m[k:k + 1] for n, m in bank.items()}) as single:
            alone = single(x)[0]
        torch.testing.assert_close(together[k], alone, rtol=1e-5, atol=1e-5)
    ones = {name: torch.ones_like(m) for name, m in bank.items()}
    with torch.inference_mode(), MaskedForward(model, ones) as identity:
        unmasked = identity(x)[2]
    torch.testing.assert_close(unmasked, model(x), rtol=1e-5, atol=1e-6)


def planted_responses(run_dir, factor: str, kind: str, n_random: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the planted net under brightness draws: unmasked (draws, n, 3) and masked (K, draws, n, 3)."""
    folder = load_run(run_dir)
    specs, multipliers = build_masks(folder, [factor], ["readout"],
                                     MaskingOptions(quantiles=(0.9,), alphas=(0.0,), soft=False, n_random=n_random))
    keep = [k for k, spec in enumerate(specs) if spec.kind == kind]
    bundle = planted_bundle()
    images = planted_images().batch(torch.arange(16))
    scale = torch.linspace(0.1, 1.0, 8)
    from augsense.factors import get_factor

    augment = get_factor(factor) if factor != "brightness" else get_factor("brightness").with_bounds(factor=(0.1, 1.0))
    draws = [augment(images, torch.full((16, augment.n_coords), float(s))) for s in scale]
    bank = {"readout": torch.from_numpy(multipliers["readout"][keep])}
    with torch.inference_mode():
        plain = torch.stack([bundle.module(x) for x in draws])
        with MaskedForward(bundle.module, bank) as masked:
            outputs = torch.stack([masked(x) for x in draws], dim=1)
    return plain, outputs


def test_planted_guided_mask_destroys_its_factor_and_spares_the_others(planted_run):
    plain, guided = planted_responses(planted_run, "brightness", "guided")
    _, random = planted_responses(planted_run, "brightness", "random")
    unit = [u for u, f in PLANTED.items() if f == "brightness"][0]
    response = plain[..., unit].var(dim=0).mean()  # spread of the brightness readout over brightness draws
    assert response > 1e-2
    assert guided[0, ..., unit].var(dim=0).mean() < 1e-6 * response  # response destroyed
    for other in set(PLANTED) - {unit}:  # the other factors' readouts are untouched
        torch.testing.assert_close(guided[0, ..., other], plain[..., other])
    random_response = torch.stack([r[..., unit].var(dim=0).mean() for r in random])
    assert random_response.mean() > 0.3 * response  # same size, chosen at random: mostly spared


def test_planted_accuracy_drops_more_under_guided_than_random(planted_run):
    bundle = planted_bundle()
    base = planted_images()
    with torch.inference_mode():
        predicted = bundle.module(base.batch(torch.arange(len(base)))).argmax(1)
    images = ImageSet(base.pixels, predicted, base.sources)  # labels: the unmasked predictions (top-1 = 1)
    result = run_masking(planted_run, MaskingOptions(quantiles=(0.9,), alphas=(0.0, 1.5), n_random=5,
                                                     augmentations="all", n_draws=2), model=bundle, images=images)
    table, gap = result.table, result.gap
    reference = table[(table.kind == "none") & (table.augmentation == "clean")]
    assert reference.top1.iloc[0] == 1.0
    row = gap[(gap.factor == "brightness") & (gap.alpha == 0.0) & (gap.augmentation == "brightness")].iloc[0]
    guided_drop = 1 - row.guided
    random_drop = table[(table.kind == "none") & (table.augmentation == "brightness")].top1.iloc[0] - row.random_mean
    assert guided_drop > 0.5 and guided_drop > 2 * random_drop
    assert row.ci_high < 0
    assert set(table.columns) >= {"factor", "quantity", "kind", "draw", "q", "alpha", "mask", "augmentation", "n_units",
                                  "top1", "top5", "changed"}
    assert set(table.kind) == {"none", "guided", "random", "least"}
    assert table.loc[table.kind == "random", "draw"].nunique() == 5
    assert (table[table["mask"] == "quantile"].n_units == 1).all()  # q = 0.9 of three live units: one
    for name in ("masking", "masking_classes", "masking_spearman", "masking_gap"):
        assert (planted_run / f"{name}.parquet").exists()
    assert set(result.spearman.augmentation) == {"clean", *FACTORS}
    assert result.classes.groupby(["config", "augmentation"]).n.sum().max() <= 2 * len(images)


def test_a_partially_labelled_set_is_masked_without_copying_its_labelled_pixels(planted_run, tmp_path, monkeypatch):
    """Only the labelled images count, in order, gathered batch by batch: the same tables as their copied subset."""
    bundle, base = planted_bundle(), planted_images()
    with torch.inference_mode():
        predicted = bundle.module(base.batch(torch.arange(len(base)))).argmax(1)
    labels = torch.where(torch.arange(len(base)) % 3 == 1, torch.full_like(predicted, -1), predicted)
    partial = ImageSet(base.pixels, labels, base.sources)
    options = MaskingOptions(quantiles=(0.9,), alphas=(0.0,), n_random=2, augmentations="all", n_draws=2, batch_size=3)
    copied = run_masking(planted_run, options, model=bundle, images=partial.labelled(), write=False)
    monkeypatch.setattr(ImageSet, "labelled", lambda self: pytest.fail("the labelled pixels were copied"))
    viewed = run_masking(planted_run, options, model=bundle, images=partial, write=False)
    pd.testing.assert_frame_equal(viewed.table, copied.table)
    pd.testing.assert_frame_equal(viewed.classes, copied.classes)
    assert viewed.timings["forwards"] == copied.timings["forwards"]


class CapturedBatch(nn.Module):
    """Reshapes with the batch size seen at the input (as EfficientNet-PyTorch does): expansion must fall back."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bs = x.shape[0]
        return self.fc(self.conv(x).mean(dim=(2, 3)).reshape(bs, -1)[:, :4])  # silently wrong when expanded


def test_captured_batch_size_is_detected_and_falls_back():
    model = CapturedBatch().eval()
    x = torch.rand(2, 3, 8, 8)
    bank = {"conv": torch.stack([torch.ones(4), torch.tensor([0.0, 1, 1, 1]), torch.tensor([2.0, 1, 0, 1])])}
    with torch.inference_mode(), MaskedForward(model, bank) as masked:
        together = masked(x)
        assert not masked.expand_inside
        with masked.unhooked():
            plain = model(x)
        chosen = masked(x, torch.tensor([2]))
    torch.testing.assert_close(together[0], plain)
    torch.testing.assert_close(chosen[0], together[2])
    assert not torch.allclose(together[1], together[0])


class InterleavedSkip(nn.Module):
    """Right shapes, wrong pairing when expanded inside: only the one-time check can catch it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)
        self.skip = nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(x).mean(dim=(2, 3))
        skip = self.skip(x.mean(dim=(2, 3)))
        return self.fc(pooled) + skip.repeat_interleave(pooled.shape[0] // x.shape[0], dim=0)


def test_silently_wrong_expansion_is_caught_by_the_check():
    model = InterleavedSkip().eval()
    x = torch.rand(3, 3, 8, 8)
    bank = {"conv": torch.rand(4, 4, generator=torch.Generator().manual_seed(5))}
    with torch.inference_mode(), MaskedForward(model, bank) as masked:
        together = masked(x)
        assert masked.verified and not masked.expand_inside
    for k in range(4):
        with torch.inference_mode(), MaskedForward(model, {"conv": bank["conv"][k:k + 1]}) as single:
            torch.testing.assert_close(together[k], single(x)[0])


def test_channels_last_copy_gives_the_same_masked_outputs_and_leaves_the_model_alone():
    model = Chain().eval()
    x = torch.rand(3, 3, 8, 8)
    model(x)  # materialise lazy layers
    fast = channels_last_copy(model)
    assert fast is not None and fast is not model
    assert model[0].weight.is_contiguous() and fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert channels_last_copy(nn.Sequential(nn.Linear(3, 2))) is None  # nothing to gain without convolutions
    bank = {"0": torch.rand(5, 4, generator=torch.Generator().manual_seed(6)) * 2}
    with torch.inference_mode(), heap_allocations() as changed:
        assert isinstance(changed, bool)
        with MaskedForward(model, bank) as masked:
            reference = masked(x)
        with MaskedForward(fast, bank) as masked:
            got = masked(x.contiguous(memory_format=torch.channels_last))
            assert masked.expand_inside
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)


def test_a_run_of_only_the_output_layer_asks_for_it_by_name(tmp_path):
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images", "layers")}
    run_sensitivity(SensitivityConfig(**values, layers=["fc"], n=16), model=planted_bundle(),
                    images=planted_images(), out_dir=tmp_path, progress=False)
    base = planted_images()
    images = ImageSet(base.pixels, torch.zeros(len(base), dtype=torch.long), base.sources)
    with pytest.raises(AugsenseError, match="pass --mask-layers fc"):
        run_masking(tmp_path, MaskingOptions(quantiles=(0.9,), alphas=(0.0,)), model=planted_bundle(), images=images)
    result = run_masking(tmp_path, MaskingOptions(layers=["fc"], quantiles=(0.9,), alphas=(0.0,), n_random=1,
                                                  soft=False, least=False), model=planted_bundle(), images=images,
                         write=False)
    assert result.layers == ["fc"] and (result.table[result.table.kind == "guided"].n_units == 1).all()


def _profile_table(profiles: dict[tuple[str, str], list[float]]) -> "pd.DataFrame":
    """A masking table whose guided rows give each (augmentation, factor) pair the given top-1 profile."""
    import pandas as pd

    grid = [(q, alpha) for alpha in (0.0, 0.5, 1.5) for q in (0.5, 0.7, 0.9)]
    rows = []
    for (augmentation, factor), values in profiles.items():
        for (q, alpha), value in zip(grid, values):
            rows.append({"config": 0, "factor": factor, "quantity": "total_order", "kind": "guided", "draw": 0,
                         "q": q, "alpha": alpha, "mask": "quantile", "augmentation": augmentation, "n_units": 1,
                         "n_images": 10, "top1": value, "top5": value, "changed": 0.0})
            rows.append({**rows[-1], "kind": "random", "top1": 0.5})  # baselines do not enter the profiles
    return pd.DataFrame(rows)


def test_pair_clustering_recovers_planted_groups_and_matches_scipy():
    """Pairs A (profiles increasing in the configuration, or exactly reversed: |ρ| = 1) and pairs B (a profile
    with ρ = 0 against A's order) form two clusters at distance 0 inside, joined last at distance 1."""
    import scipy.cluster.hierarchy
    import scipy.stats

    from augsense.analyses.masking import cluster_pairs, pair_profiles

    x = np.arange(9, dtype=float)
    b = np.array([4, 0, 8, 2, 6, 1, 7, 3, 5], dtype=float)
    b_rho = scipy.stats.spearmanr(x, b).statistic
    profiles = {("clean", "hue"): x / 10, ("hue", "hue"): np.exp(x) / 1e4, ("clean", "rotation"): 1 - x / 10,
                ("rotation", "rotation"): b / 10, ("clean", "blur"): (b / 10) ** 2}
    table = _profile_table(profiles)
    pairs, rho, linkage = cluster_pairs(table)
    assert len(pairs) == 5 and (pairs["n_configs"] == 9).all()
    _, matrix = pair_profiles(table)
    leaf = {(r.augmentation, r.factor): r.leaf for r in pairs.itertuples()}
    for (p1, v1) in profiles.items():
        for (p2, v2) in profiles.items():
            got = rho[(rho.leaf == leaf[p1]) & (rho.leaf2 == leaf[p2])].iloc[0]
            assert got.rho == pytest.approx(scipy.stats.spearmanr(v1, v2).statistic, abs=1e-12)
            assert got.distance == pytest.approx(np.sqrt(1 - abs(got.rho)), abs=1e-12)
    z = linkage[["left", "right", "distance", "size"]].to_numpy(float)
    clusters = scipy.cluster.hierarchy.fcluster(z, 2, "maxclust")
    group_a = {clusters[leaf[p]] for p in [("clean", "hue"), ("hue", "hue"), ("clean", "rotation")]}
    group_b = {clusters[leaf[p]] for p in [("rotation", "rotation"), ("clean", "blur")]}
    assert len(group_a) == 1 and len(group_b) == 1 and group_a != group_b
    assert linkage["distance"].iloc[-1] == pytest.approx(np.sqrt(1 - abs(b_rho)))
    assert (linkage["distance"].iloc[:-1] < 1e-12).all()
    assert sorted(pairs["leaf_order"]) == list(range(5))


def test_pair_clustering_treats_a_constant_profile_as_unrelated():
    from augsense.analyses.masking import cluster_pairs

    x = np.arange(9, dtype=float)
    pairs, rho, linkage = cluster_pairs(_profile_table({("clean", "hue"): x, ("hue", "hue"): x ** 2,
                                                         ("clean", "blur"): np.zeros(9)}))
    flat = pairs.set_index(["augmentation", "factor"]).loc[("clean", "blur"), "leaf"]
    assert rho[(rho.leaf == flat) & (rho.leaf2 != flat)].rho.isna().all()
    assert rho[(rho.leaf == flat) & (rho.leaf2 != flat)].distance.eq(1.0).all()
    assert linkage["distance"].iloc[-1] == pytest.approx(1.0)


def test_masking_run_writes_the_pair_clustering(planted_run):
    import pandas as pd

    options = MaskingOptions(factors=["brightness", "hflip"], quantiles=(0.5, 0.9), alphas=(0.0, 1.5), n_random=1,
                             least=False, device="cpu", augmentations="all")
    bundle, base = planted_bundle(), planted_images()
    with torch.inference_mode():
        predicted = bundle.module(base.batch(torch.arange(len(base)))).argmax(1)
    result = run_masking(planted_run, options, model=bundle, images=ImageSet(base.pixels, predicted, base.sources))
    pairs = pd.read_parquet(planted_run / "masking_pairs.parquet")
    assert len(pairs) == len(result.pairs) == 4 * 2  # (clean + the run's 3 factors) × 2 mask factors
    linkage = pd.read_parquet(planted_run / "masking_linkage.parquet")
    assert len(linkage) == len(pairs) - 1 and linkage["size"].iloc[-1] == len(pairs)


def test_the_cli_max_batch_default_is_the_options_default():
    import argparse

    from augsense.analyses.masking import MAX_BATCH
    from augsense.analyses.single_class import ClassDecayOptions, SingleClassOptions
    from augsense.commands.mask import add_common

    parser = argparse.ArgumentParser()
    add_common(parser)
    assert parser.parse_args(["run"]).max_batch == MaskingOptions().max_batch == MAX_BATCH == 64
    assert SingleClassOptions().max_batch == ClassDecayOptions().max_batch == MAX_BATCH
