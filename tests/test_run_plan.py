"""The run plan: one fingerprint over everything that changes a run's numbers.

A run stopped after a few blocks is resumed with one key changed: every key that changes the sums
(factors, bounds, output, weights, layers of equal width, reduction, images, image mode,
preprocessing, seed, n, block size) is refused with one line naming it, before anything in the run
folder is touched; keys that do not (confidence, checkpoint_every, report, a batch_size giving the
same block size) are accepted and the resumed run equals an uninterrupted one. Torchrun ranks that
loaded different images refuse to start. Stimulus export writes the plan into design.json.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from augsense.analyses.plan import RunPlan
from augsense.analyses.sensitivity import build_factor_space, design_for, run_sensitivity
from augsense.config import SensitivityConfig
from augsense.errors import AugsenseError
from augsense.io.checkpoints import CHECKPOINT_NAME, finished_blocks, load_checkpoint
from planted import PLANTED_CONFIG, planted_bundle, planted_images

N, BATCH = 64, 20  # group 5 (3 factors, Sobol): at most 4 rows per block (augsense.design caps it further)


def config(**changes) -> SensitivityConfig:
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    values.update(n=N, batch_size=BATCH, checkpoint_every=0.0)
    values.update(changes)
    return SensitivityConfig(**values)


def heavier_bundle():
    bundle = planted_bundle()
    with torch.no_grad():
        bundle.module.fc.weight[0, 0] += 1.0  # same architecture and shapes, other weights
    return bundle


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A run folder with a checkpoint after 3 blocks (copied by each test that resumes it)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    run = run_sensitivity(config(), model=planted_bundle(), images=planted_images(), out_dir=out, progress=False,
                          stop_after_blocks=3)
    assert not run.complete and len(finished_blocks(load_checkpoint(out / CHECKPOINT_NAME))) == 3
    return out


def copy_of(stopped: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# (what changes, config changes, model, images, keys the refusal must name)
CHANGED = {
    "factors": (dict(factors=["brightness", "saturation", "grayscale"]), None, None, ["factors", "switches", "order"]),
    "bounds": (dict(bounds={"brightness": {"factor": [0.5, 1.0]}, "saturation": {"factor": [0.0, 1.0]}}), None, None,
               ["bounds"]),
    "output": (dict(output="softmax"), None, None, ["output"]),
    "weights": ({}, heavier_bundle, None, ["weights"]),
    "layers of equal width": (dict(layers=["fc"]), None, None, ["layers"]),  # the model output is fc: 3 units both
    "reduction": (dict(reduction="max"), None, None, ["reduction"]),
    "images": ({}, None, lambda: planted_images(seed=1), ["images"]),
    "fewer images": (dict(limit_images=8), None, None, ["images"]),
    "image_mode": (dict(image_mode="joint", batch_size=24), None, None, ["image_mode"]),  # group 6: 24 // 6 = 20 // 5
    "preprocessing": (dict(preprocessing="paper"), None, None, ["preprocessing"]),
    "seed": (dict(seed=1), None, None, ["seed"]),
    "n": (dict(n=128), None, None, ["n"]),
    "block size": (dict(batch_size=5), None, None, ["block_size"]),  # one row per block
    "switches": (dict(switches=["brightness"]), None, None, ["switches"]),
    "random_order": (dict(random_order=True, batch_size=24), None, None, ["random_order"]),
}


def test_sobol2_without_second_order_intervals_is_its_own_plan():
    from augsense.analyses.plan import RunPlan

    def plan(**changes):
        cfg = config(estimator="sobol2", **changes)
        space = build_factor_space(cfg)
        return RunPlan.build(cfg, space=space, design=design_for(cfg, space), images=planted_images())

    kept, dropped = plan(), plan(second_order_intervals=False)
    assert kept.differences(dropped) == ["estimator"]
    assert dropped.entries["estimator"] == "sobol2 without second-order intervals"
    # for first/total-order Sobol' the switch changes no sums, so it changes no plan
    sobol = config(second_order_intervals=False)
    space = build_factor_space(sobol)
    assert RunPlan.build(sobol, space=space, design=design_for(sobol, space), images=planted_images()).fingerprint \
        == RunPlan.build(config(), space=space, design=design_for(config(), space), images=planted_images()).fingerprint


@pytest.mark.parametrize("what", list(CHANGED))
def test_a_resume_that_changes_the_numbers_is_refused_naming_the_key(what, stopped, tmp_path):
    changes, model, images, keys = CHANGED[what]
    base = dict(layers=["output"]) if what == "layers of equal width" else {}
    out = tmp_path / "run"
    if base:  # a stopped run on the model output, resumed on the fc layer (same width, other name)
        run_sensitivity(config(**base), model=planted_bundle(), images=planted_images(), out_dir=out, progress=False,
                        stop_after_blocks=3)
    else:
        out = copy_of(stopped, tmp_path)
    before = snapshot(out)
    bundle = (model or planted_bundle)()
    image_set = (images or planted_images)()
    if changes.get("limit_images"):
        image_set = planted_images(n=changes["limit_images"])  # what --limit-images gives from a folder
    with pytest.raises(AugsenseError) as refused:
        run_sensitivity(config(**changes), model=bundle, images=image_set, out_dir=out, resume=True, progress=False)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("cannot resume: ")
    block_size = design_for(config(**changes), build_factor_space(config(**changes))).block_size
    if block_size != design_for(config(), build_factor_space(config())).block_size and "block_size" not in keys:
        keys = keys + ["block_size"]  # e.g. a longer design may get longer blocks (augsense.design caps them)
    named = message.split(" differ")[0].removeprefix("cannot resume: ").split(", ")
    assert named == keys, message
    assert "start a new --out or drop --resume" in message
    assert snapshot(out) == before  # refused before anything in the folder was written


def test_keys_that_do_not_change_the_sums_resume_to_the_uninterrupted_run(stopped, tmp_path):
    harmless = dict(confidence=0.9, checkpoint_every=0.5, report=False, batch_size=24)  # 24 // 5 = 20 // 5 rows
    out = copy_of(stopped, tmp_path)
    resumed = run_sensitivity(config(**harmless), model=planted_bundle(), images=planted_images(), out_dir=out,
                              resume=True, progress=False)
    whole = run_sensitivity(config(confidence=0.9), model=planted_bundle(), images=planted_images(), progress=False)
    assert resumed.complete and resumed.plan.fingerprint == whole.plan.fingerprint
    for quantity in ("first_order", "total_order", "first_order_ci", "total_order_ci", "variance"):
        np.testing.assert_allclose(getattr(resumed.result, quantity), getattr(whole.result, quantity), rtol=1e-10,
                                   atol=1e-14, equal_nan=True, err_msg=quantity)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and info["plan"]["fingerprint"] == whole.plan.fingerprint
    assert info["plan"]["factors"] == ["brightness", "saturation", "hflip"]


def test_the_plan_is_stable_and_covers_weights_and_image_content():
    cfg = config()
    space = build_factor_space(cfg)
    design = design_for(cfg, space)

    def plan(bundle=None, images=None, **changes) -> RunPlan:
        from augsense.probe.hooks import ActivationProbe

        c = config(**changes) if changes else cfg
        b = bundle or planted_bundle()
        probe = ActivationProbe(b.module, c.layers, reduction=c.reduction, output=c.output, input_size=32)
        s = build_factor_space(c)
        return RunPlan.build(c, space=s, design=design_for(c, s), images=images or planted_images(), bundle=b,
                             probe=probe)

    reference = plan()
    assert plan().fingerprint == reference.fingerprint  # rebuilt from scratch: same fingerprint
    assert plan(confidence=0.5, checkpoint_every=3.0, device="cpu", report=True).fingerprint == reference.fingerprint
    one_pixel = planted_images()
    one_pixel.pixels[3, 1, 5, 7] ^= 1
    assert plan(images=one_pixel).differences(reference) == ["images"]
    assert plan(bundle=heavier_bundle()).differences(reference) == ["weights"]
    again = RunPlan.from_dict(json.loads(json.dumps(reference.to_dict())))
    assert again.fingerprint == reference.fingerprint == reference.to_dict()["fingerprint"]
    assert design.block_size == reference.entries["block_size"] > 1 and space.players == reference.entries["factors"]


def test_the_refusal_names_old_and_new_values_in_one_line():
    cfg = config()
    space = build_factor_space(cfg)
    design = design_for(cfg, space)
    old = RunPlan.build(cfg, space=space, design=design, images=planted_images())
    new_cfg = config(bounds={"brightness": {"factor": [0.5, 1.0]}, "saturation": {"factor": [0.0, 1.0]}}, seed=3)
    new_space = build_factor_space(new_cfg)
    new = RunPlan.build(new_cfg, space=new_space, design=design_for(new_cfg, new_space), images=planted_images())
    message = new.refusal(old.to_dict())
    assert message.startswith("cannot resume: bounds, seed differ from the checkpoint's run (")
    assert "bounds.brightness.factor: [0.1,1.0] → [0.5,1.0]" in message and "seed: 0 → 3" in message
    assert "\n" not in message
    assert "records no run plan" in new.refusal(None)


def _rank(rank: int, world: int, port: int, report: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:  # rank 1 read another folder of images (e.g. a node with a stale copy)
        run_sensitivity(config(n=16), model=planted_bundle(), images=planted_images(seed=rank), progress=False)
        outcome = "ran"
    except AugsenseError as error:
        outcome = str(error)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    Path(f"{report}.{rank}").write_text(outcome)


def test_torchrun_ranks_with_different_images_refuse_to_start(tmp_path):
    from test_parallel import free_port

    mp.start_processes(_rank, nprocs=2, start_method="fork", join=True,
                       args=(2, free_port(), str(tmp_path / "outcome")))
    for rank in (0, 1):
        message = (tmp_path / f"outcome.{rank}").read_text()
        assert message.startswith("the ranks disagree on the run: rank 1 differs from rank 0 in images"), message
        assert "\n" not in message and "same config, model and images" in message


def test_stimulus_export_writes_the_plan_into_design_json(tmp_path):
    from augsense.analyses.stimuli import METADATA, StimulusDesign, load_stimulus_design

    cfg = config(n=8)
    stimuli = StimulusDesign.from_config(cfg, images=planted_images(n=4), size=32)
    stimuli.export(tmp_path)
    data = json.loads((tmp_path / METADATA).read_text())
    plan = data["plan"]
    assert plan["factors"] == stimuli.players and plan["n"] == 8 and plan["images"]["count"] == 4
    assert plan["weights"] is None and plan["fingerprint"] == RunPlan.from_dict(plan).fingerprint
    assert load_stimulus_design(tmp_path)[0].plan == plan
    plan["seed"] = 5  # an edited plan no longer matches its fingerprint
    (tmp_path / METADATA).write_text(json.dumps(data))
    with pytest.raises(AugsenseError, match="run plan in design.json"):
        load_stimulus_design(tmp_path)
