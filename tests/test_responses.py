"""Recorded responses: the round trip through PNGs, missing trials, trial noise, bad input, scipy's dict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from augsense.analyses.responses import analyse_responses, sensitivity_from_outputs
from augsense.analyses.sensitivity import run_sensitivity
from augsense.analyses.stimuli import StimulusDesign, read_stimulus
from augsense.cli import main
from augsense.config import SensitivityConfig
from augsense.design import make_design
from augsense.errors import AugsenseError
from augsense.io.provenance import table_stamp
from augsense.io.results import load_run
from planted import PLANTED_CONFIG, PlantedNet, planted_bundle, planted_images

UNITS = [f"unit{i}" for i in range(5)]


def config(**changes) -> SensitivityConfig:
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    values.update(changes)
    return SensitivityConfig(**values)


def record_from_pngs(folder) -> pd.DataFrame:
    """The 'experiment': reads only the exported PNGs and the trial numbers, answers with the planted readout."""
    net = PlantedNet().eval()
    files = sorted((folder / "stimuli").glob("*.png"))
    images = torch.stack([read_stimulus(path) for path in files])
    with torch.no_grad():
        units = net.readout(net.colour(images)).numpy()
    frame = pd.DataFrame(units, columns=UNITS)
    frame.insert(0, "trial", [int(path.stem) for path in files])
    return frame.sample(frac=1.0, random_state=1)  # recorded rows in any order


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    cfg = config(n=64)
    run = run_sensitivity(cfg, model=planted_bundle(), images=planted_images(), progress=False)
    design = StimulusDesign.from_config(cfg, images=planted_images(), size=32, shuffle_seed=7)
    design.export(out)
    return run, out, record_from_pngs(out)


def test_round_trip_through_pngs_gives_the_in_process_indices(round_trip, tmp_path):
    run, out, responses = round_trip
    analysed = analyse_responses(out / "design.parquet", responses, out_dir=tmp_path / "run")
    assert analysed.summary.missing_trials == 0 and analysed.summary.base_rows_dropped == 0
    for quantity in ("first_order", "total_order"):
        ours, theirs = getattr(analysed.result, quantity), getattr(run.result, quantity)
        # PNG quantisation (1/510 per pixel) only: planted units 0-2 agree to ~1e-2
        np.testing.assert_allclose(ours[:3], theirs[:3], atol=0.03)
        assert np.isnan(ours[3]).all() and analysed.result.dead[3]
    for unit, factor in enumerate(["brightness", "saturation", "hflip"]):
        assert analysed.result.total_order_ci[0, unit, unit] > 0.9
    folder = load_run(tmp_path / "run")
    assert folder.players == ["brightness", "saturation", "hflip"] and folder.layer_names == ["responses"]
    assert folder.map("responses", "total_order").shape == (5, 3)
    assert folder.info["layers"]["responses"]["unit_names"] == UNITS
    assert set(folder.layers["quantity"]) >= {"first_order", "total_order"}
    row = folder.indices.query("unit == 1 and factor == 'saturation' and quantity == 'total_order'")
    assert row.estimate.iloc[0] == pytest.approx(analysed.result.total_order[1, 1])


def test_missing_trials_and_nan_responses_drop_whole_groups(round_trip):
    run, out, responses = round_trip
    design = StimulusDesign.from_dict(__import__("json").loads((out / "design.json").read_text()))
    stimulus_of = design.presentation().set_index("trial")["stimulus"]
    lost = responses.iloc[:7]                                       # seven trials never recorded
    gappy = responses.iloc[7:].copy()
    gappy.iloc[:3, gappy.columns.get_loc("unit2")] = np.nan         # three NaN responses in one unit
    broken_rows = set(stimulus_of[lost["trial"]] // 5) | set(stimulus_of[gappy["trial"].iloc[:3]] // 5)
    analysed = analyse_responses(out / "design.csv", gappy)
    summary = analysed.summary
    assert summary.missing_trials == 7 and summary.trials_recorded == 320 - 7
    assert summary.nan_responses == {"unit0": 0, "unit1": 0, "unit2": 3, "unit3": 0, "unit4": 0}
    assert summary.base_rows_dropped == len(broken_rows) and analysed.result.n == 64 - len(broken_rows)
    assert "dropped" in "\n".join(summary.lines())
    np.testing.assert_allclose(analysed.result.total_order[:3], run.result.total_order[:3], atol=0.05)


def additive_responses(design: StimulusDesign, noise: float, seed: int) -> pd.DataFrame:
    """Two hand-written neurons of the factor parameters, one row per trial, with Gaussian trial noise.

    neuron a = 2·brightness + 0.6·hflip (S = 0.75, 0.25 for brightness, hflip; additive, so ST = S);
    neuron b = 3·saturation + 0.9·hflip (variances 0.75 and 0.2025). Trial noise σ shrinks first-order
    indices by V/(V + σ²/R) for R averaged repeats; σ = 0.1 keeps that under 1 % with R = 4. (A neuron
    driven by one factor alone has S = 1 with a nearly zero-width interval, which any trial noise
    misses: planted values are kept off the boundary.)
    """
    table = design.trial_table()
    rng = np.random.default_rng(seed)
    a = 2 * table["brightness.factor"] + 0.6 * table["hflip.active"].astype(float)
    b = 3 * table["saturation.factor"] + 0.9 * table["hflip.active"].astype(float)
    return pd.DataFrame({"stimulus": table["stimulus"], "a": a + noise * rng.standard_normal(len(table)),
                         "b": b + noise * rng.standard_normal(len(table))})


PLANTED_V = np.array([[0.27, 0.0, 0.09], [0.0, 0.75, 0.2025]])  # additive: each factor's variance per neuron
PLANTED_S = PLANTED_V / PLANTED_V.sum(1, keepdims=True)


def covers(ci: np.ndarray, value: np.ndarray) -> bool:
    return bool(((ci[0] <= value + 1e-9) & (value - 1e-9 <= ci[1])).all())


def test_trial_noise_widens_the_intervals_which_still_cover_the_planted_values():
    widths = []
    for repeats, noise in ((1, 0.0), (4, 0.1), (1, 0.1)):
        # 99 % intervals: six per recording at one fixed seed, so the outcome is deterministic
        design = StimulusDesign.from_config(config(n=256, confidence=0.99), images=planted_images(4), size=32,
                                            repeats=repeats,
                                            shuffle_seed=repeats)
        result = analyse_responses(design, additive_responses(design, noise, seed=3)).result
        widths.append(sum(float((getattr(result, q + "_ci")[1] - getattr(result, q + "_ci")[0]).mean())
                          for q in ("first_order", "total_order")))
        if repeats == 4 or noise == 0:
            # the paired first-order numerator is blind to noise: only V/(V + eta) (< 1 % here) shrinks it
            assert covers(result.first_order_ci, PLANTED_S), (repeats, result.first_order_ci)
            # total order: every member's noise adds eta = sigma^2 / R to numerator and denominator alike
            eta = noise**2 / repeats
            V = PLANTED_V.sum(1, keepdims=True)
            assert covers(result.total_order_ci, (PLANTED_V + eta) / (V + eta)), (repeats, result.total_order_ci)
    noiseless, averaged, single = widths
    assert noiseless < averaged < single


def test_bad_response_tables_get_one_clear_message_each(round_trip, tmp_path, capsys):
    _, out, responses = round_trip
    table = out / "design.parquet"
    by_stimulus = responses.rename(columns={"trial": "stimulus"})
    cases = {
        "not in the design": responses.assign(trial=responses["trial"] + 1000),
        "appears 2 times": pd.concat([by_stimulus, by_stimulus.head(1)]),
        "trial .* appears 2 times": pd.concat([responses, responses.head(1)]),
        "not numeric": responses.assign(unit1=["spike"] * len(responses)),
        "'stimulus' column": responses.drop(columns="trial"),
        "integer ids": responses.assign(trial=responses["trial"] + 0.5),
        "no unit columns": responses[["trial"]],
    }
    for message, frame in cases.items():
        with pytest.raises(AugsenseError, match=message):
            analyse_responses(table, frame)
    path = tmp_path / "bad.csv"
    cases["not numeric"].to_csv(path, index=False)
    assert main(["responses", str(table), str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not numeric" in err and "unit1" in err


def test_cli_analyses_a_parquet_recording(round_trip, tmp_path, capsys):
    _, out, responses = round_trip
    path = tmp_path / "recording.parquet"
    responses.to_parquet(path)
    assert main(["responses", str(out), str(path), "--out", str(tmp_path / "run"), "--units", "unit0,unit1",
                 "--no-report"]) == 0
    printed = capsys.readouterr().out
    assert "320 of 320 recorded" in printed and "unit1" in printed
    assert load_run(tmp_path / "run").map("responses", "first_order").shape == (2, 3)


def test_precomputed_outputs_match_scipy_dict_and_design_order():
    design = make_design("sobol", [1, 1, 1], 64, seed=2, block_size=16)
    points = np.concatenate([b.points for b in design.blocks()])          # (n, G, 3)
    x = -np.pi + 2 * np.pi * points
    y = np.sin(x[..., 0]) + 7 * np.sin(x[..., 1]) ** 2 + 0.1 * x[..., 2] ** 4 * np.sin(x[..., 0])  # Ishigami (n, G)
    ours = sensitivity_from_outputs(design, y.reshape(-1))
    as_dict = {"f_A": y[:, 0], "f_B": y[:, 1], "f_AB": y[:, 2:].T}
    from_dict = sensitivity_from_outputs(design, as_dict)
    reference = scipy.stats.sobol_indices(func=as_dict, n=64)
    np.testing.assert_allclose(from_dict.first_order[0], ours.first_order[0], atol=1e-12)
    np.testing.assert_allclose(ours.first_order[0], reference.first_order, atol=1e-10)
    np.testing.assert_allclose(ours.total_order[0], reference.total_order, atol=1e-10)
    with pytest.raises(AugsenseError, match="design order"):
        sensitivity_from_outputs(design, y[:10])


def test_responses_into_a_finished_run_folder_needs_overwrite(round_trip, tmp_path, capsys):
    """Like `augsense run`: another run's results are not silently replaced."""
    _, out, responses = round_trip
    path = tmp_path / "recording.parquet"
    responses.to_parquet(path)
    run_folder = tmp_path / "run"
    command = ["responses", str(out), str(path), "--out", str(run_folder), "--no-report"]
    assert main(command) == 0
    first = load_run(run_folder).info["result_set"]
    capsys.readouterr()
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert load_run(run_folder).info["result_set"] == first
    assert main(command + ["--overwrite"]) == 0
    second = load_run(run_folder).info["result_set"]
    assert second != first
    # its tables carry the set's stamp like a run's, so tables copied in from another set are noticed
    assert table_stamp(run_folder / "indices.parquet") == table_stamp(run_folder / "layers.parquet") == second
