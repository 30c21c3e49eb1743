"""The run loop's speed paths: blocks batched per forward pass, resumed runs regrouped exactly, channels-last,
the image feed, and per-element results stored as arrays (rebuilt into tidy rows on demand)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from augsense.analyses.feed import ImageFeed, channels_last, group_of, is_convolutional
from augsense.analyses import sensitivity
from augsense.analyses.sensitivity import run_sensitivity
from augsense.config import SensitivityConfig
from augsense.io.checkpoints import CHECKPOINT_NAME
from augsense.io.results import load_run, map_rows
from augsense.report.data import read_report_data
from planted import PLANTED_CONFIG, planted_bundle, planted_images

QUANTITIES = ("first_order", "total_order", "first_order_ci", "total_order_ci", "mean", "variance")


def config(**changes) -> SensitivityConfig:
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    values.update(n=64, batch_size=10, checkpoint_every=0.0)  # group 5, blocks of 2 rows: 32 blocks of 10
    values.update(changes)
    return SensitivityConfig(**values)


def counted_run(cfg: SensitivityConfig, **kwargs):
    bundle, calls = planted_bundle(), []
    bundle.module.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    run = run_sensitivity(cfg, model=bundle, images=planted_images(), progress=False, **kwargs)
    return run, calls


@pytest.fixture
def whole_groups(monkeypatch):
    """Groups of 80 evaluations forwarded in one pass (the CPU's pass cap is tested in test_hostile.py)."""
    monkeypatch.setattr(sensitivity, "CPU_FORWARD_IMAGES", 80)


def test_blocks_share_forward_passes_and_give_the_indices_of_one_block_per_pass(whole_groups):
    single, single_calls = counted_run(config(batch_size=10))
    batched, batched_calls = counted_run(config(batch_size=80))
    assert single.design.n_blocks == batched.design.n_blocks == 32
    assert single_calls.count(10) >= 32 and batched_calls.count(80) == 4  # 8 blocks per pass
    for q in QUANTITIES:
        np.testing.assert_allclose(getattr(batched.result, q), getattr(single.result, q), rtol=1e-6, atol=1e-9,
                                   equal_nan=True, err_msg=q)


def test_a_resumed_run_forwards_the_groups_of_the_uninterrupted_run(tmp_path, whole_groups):
    uninterrupted, _ = counted_run(config(batch_size=80))
    partial, _ = counted_run(config(batch_size=80), out_dir=tmp_path, stop_after_blocks=3)
    assert not partial.complete and (tmp_path / CHECKPOINT_NAME).exists()
    resumed, calls = counted_run(config(batch_size=80), out_dir=tmp_path, resume=True)
    assert calls.count(80) == 4  # blocks 0-2 of the first group are forwarded again with it, then discarded
    for q in QUANTITIES:
        np.testing.assert_allclose(getattr(resumed.result, q), getattr(uninterrupted.result, q), rtol=1e-10,
                                   atol=1e-14, equal_nan=True, err_msg=q)


def test_forward_groups_follow_the_rank_sequence():
    assert group_of(range(0, 10), 4, 5) == range(4, 8)
    assert group_of(range(0, 10), 4, 9) == range(8, 10)
    mine = range(1, 20, 3)  # rank 1 of 3: 1, 4, 7, 10, 13, 16, 19
    assert list(group_of(mine, 2, 10)) == [7, 10] and list(group_of(mine, 2, 19)) == [19]
    assert list(group_of(mine, 1, 13)) == [13]


class Tiny(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x).relu())


def test_channels_last_only_for_real_convolutions_and_restored_after():
    torch.manual_seed(0)
    model, x = Tiny(16).eval(), torch.rand(4, 3, 12, 12)
    with torch.inference_mode():
        reference = model(x)
        with channels_last(model) as layout:
            assert layout == torch.channels_last
            assert model.body.weight.is_contiguous(memory_format=torch.channels_last)
            inside = model(x.contiguous(memory_format=layout))
    assert model.body.weight.is_contiguous()
    torch.testing.assert_close(inside, reference, rtol=1e-5, atol=1e-5)
    assert is_convolutional(model) and not is_convolutional(Tiny(8)) and not is_convolutional(planted_bundle().module)
    with channels_last(planted_bundle().module) as layout:
        assert layout == torch.contiguous_format


def test_channels_last_restores_each_parameters_own_layout_and_values():
    torch.manual_seed(0)
    model = Tiny(16).eval()
    model.body.to(memory_format=torch.channels_last)  # a model that is partly channels-last already
    model.register_buffer("planes", torch.rand(2, 3, 4, 5))
    stem, body = model.stem.weight, model.body.weight
    strides = {name: t.stride() for name, t in [*model.named_parameters(), *model.named_buffers()]}
    x = torch.rand(2, 3, 12, 12)
    with torch.inference_mode():
        with channels_last(model) as layout:
            assert model.stem.weight.is_contiguous(memory_format=torch.channels_last)
            model(x.contiguous(memory_format=layout))
    with torch.no_grad():
        with channels_last(model):
            model.stem.weight.add_(1.0)  # a change made inside the block is kept
    assert {name: t.stride() for name, t in [*model.named_parameters(), *model.named_buffers()]} == strides
    assert model.stem.weight is stem and model.body.weight is body  # the same Parameter objects
    assert model.stem.weight.is_contiguous() and model.body.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.stem.weight.is_inference() and model.stem.weight.requires_grad
    model(x).sum().backward()  # still usable for training: no inference tensors left behind
    torch.manual_seed(0)
    assert torch.equal(model.stem.weight.detach(), Tiny(16).stem.weight.detach() + 1.0)


def test_the_cpu_feed_gives_the_images_batch():
    images = planted_images()
    index = torch.tensor([3, 0, 3, 15])
    feed = ImageFeed(images, torch.device("cpu"))
    assert feed.resident is None
    torch.testing.assert_close(feed.batch(index), images.batch(index), rtol=0, atol=0)


@pytest.fixture(scope="module")
def per_element_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("arrays")
    run = run_sensitivity(config(n=32, batch_size=40, layers=["colour", "readout"], reduction="none",
                                 estimator="sobol2"),
                          model=planted_bundle(), images=planted_images(), out_dir=out, progress=False)
    return run, out


def test_per_element_layers_are_arrays_and_their_rows_are_rebuilt_exactly(per_element_run):
    run, out = per_element_run
    stored = pd.read_parquet(out / "indices.parquet")
    assert set(stored["layer"]) == {"readout"}  # colour (4 × 32 × 32 units) is in maps.npz only
    # the oracle: the estimator's own tidy table of the colour columns
    columns = run.slices["colour"]
    frame = run.result.to_dataframe(factor_names=run.players)
    frame = frame[frame["level"] == "output"]
    frame = frame[frame["output"].astype(int).between(columns.start, columns.stop - 1)]
    folder = load_run(out)
    rebuilt = folder.indices
    rebuilt = rebuilt[rebuilt["layer"] == "colour"]
    assert len(rebuilt) == len(frame) > 4096 * 3
    key = ["unit", "quantity", "factor", "factor2"]
    expected = frame.assign(unit=frame["output"].astype(int) - columns.start)
    merged = rebuilt.merge(expected, on=key, suffixes=("", "_truth"), how="outer", indicator=True)
    assert (merged["_merge"] == "both").all()
    for column in ("estimate", "ci_low", "ci_high"):
        np.testing.assert_array_equal(merged[column].to_numpy(float), merged[column + "_truth"].to_numpy(float))
    assert (merged["dead"] == merged["dead_truth"]).all()
    one = folder.unit_rows("colour", ("second_order",))
    assert set(one["quantity"]) == {"second_order"} and len(one) == 4096 * 3  # 3 factors: 3 pairs
    assert set(folder.unit_rows("readout")["layer"]) == {"readout"}
    assert set(read_report_data(out).indices["layer"]) == {"colour", "readout"}
    assert map_rows({}, "colour", run.players).empty


def test_normalise_into_is_the_stretch_and_normalisation_written_in_one_pass():
    from augsense.analyses.sensitivity import minmax_stretch, normalise_into
    from augsense.io.models import IMAGENET_MEAN, IMAGENET_STD, ModelBundle

    torch.manual_seed(0)
    images = torch.rand(5, 3, 16, 16) * 0.6 + 0.2
    images[1] = 0.5  # a flat image: the stretch's span is clamped, as minmax_stretch does
    bundle = ModelBundle(nn.Identity(), "identity")
    for stretch in (True, False):
        out = torch.empty(5, 3, 16, 16, memory_format=torch.channels_last)
        expected = bundle.normalise(minmax_stretch(images) if stretch else images)
        assert normalise_into(images, out, IMAGENET_MEAN, IMAGENET_STD, stretch=stretch) is out
        assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
