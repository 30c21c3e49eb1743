"""Recorded responses to exported stimuli → the same indices, CIs and run folder as a CNN run.

Responses (neurons, voxels, behaviour) come as a table with one row per presented trial, keyed by
``stimulus`` (the stimulus id of the design table) or ``trial`` (the presentation position), and one
numeric column per recorded unit; rows may be in any order. Repeated presentations of a stimulus
are averaged (NaN responses are skipped). The averaged responses, in design order, feed the same
streaming accumulators as a CNN run (Sobol: Saltelli 2010 / Jansen 1999; Shapley: Plischke,
Rabitti & Borgonovo 2021, Goda 2021), with within-image (paired) denominators in within-image mode.

**Missing responses.** Pick-freeze estimators compare the members of a base row's group (A, B,
AB_i, …); a group with a missing member cannot contribute. A base row is therefore dropped whole
when any of its members has no response in any unit, so every unit and the layer aggregate use
the same rows; the number dropped is reported (``RecordingSummary``). Indices stay unbiased when
trials are missing at random; the CIs widen with fewer rows.

**Trial noise** adds variance to every evaluation: it inflates the denominators (and the
total-order numerators) by σ²/R for R averaged repeats, shrinking first-order indices by
V/(V + σ²/R). Repeats both narrow the CIs and reduce this bias.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from augsense.analyses.stimuli import StimulusDesign, load_stimulus_design
from augsense.design import Design
from augsense.errors import AugsenseError
from augsense.estimators import DesignAccumulator, SensitivityResult, make_accumulator

#: Columns of a response table that are never read as recorded units.
ID_COLUMNS = ("stimulus", "trial", "repeat", "file")

Outputs = np.ndarray | torch.Tensor | Mapping[str, Any]


# -- estimators fed with precomputed outputs -----------------------------------------------------
def outputs_in_design_order(design: Design, outputs: Outputs) -> np.ndarray:
    """Precomputed outputs as a (n, G, m) float64 array in the design's member order.

    ``outputs``: (n·G,) or (n·G, m) rows in design order (stimulus id = base_row·G + member), or
    (n, G, m); for ``sobol`` designs also scipy's dict ``{"f_A": (m, n), "f_B": (m, n), "f_AB":
    (d, m, n)}`` (1-D ``f_A``/``f_B`` and 2-D ``f_AB`` for one output), as
    ``scipy.stats.sobol_indices(func=dict)`` accepts.
    """
    n, G = design.n, design.group_size
    if isinstance(outputs, Mapping):
        if design.kind != "sobol" or set(outputs) != {"f_A", "f_B", "f_AB"}:
            raise AugsenseError("a dict of outputs needs exactly the keys f_A, f_B, f_AB (scipy's layout) and a "
                                f"'sobol' design; this design is {design.kind!r}: pass an array in design order")
        f_a, f_b, f_ab = (np.asarray(outputs[k], dtype=np.float64) for k in ("f_A", "f_B", "f_AB"))
        if f_a.ndim == 1:
            f_a, f_b, f_ab = f_a[None], f_b[None], f_ab[:, None]
        d = design.n_players
        if f_a.shape[1:] != (n,) or f_b.shape != f_a.shape or f_ab.shape != (d,) + f_a.shape:
            raise AugsenseError(f"f_A and f_B must be (m, {n}) and f_AB ({d}, m, {n}); got {f_a.shape}, {f_b.shape}, "
                                f"{f_ab.shape}")
        return np.concatenate([f_a[None], f_b[None], f_ab]).transpose(2, 0, 1)  # (n, G, m)
    values = outputs.detach().cpu().double().numpy() if isinstance(outputs, torch.Tensor) else np.asarray(outputs)
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise AugsenseError(f"outputs must be real numbers, got dtype {values.dtype}")
    values = values.astype(np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim == 2 and values.shape[0] == n * G:
        return values.reshape(n, G, values.shape[1])
    if values.ndim == 3 and values.shape[:2] == (n, G):
        return values
    raise AugsenseError(f"outputs must have {n * G} rows in design order ((n·G,) or (n·G, m)) or shape ({n}, {G}, m) "
                        f"for this design (n = {n}, group size {G}); got {values.shape}")


def accumulate_outputs(design: Design, outputs: Outputs, *, denominator: Literal["pooled", "paired"] = "pooled",
                       groups: torch.Tensor | None = None) -> tuple[DesignAccumulator, int]:
    """Feed precomputed outputs through the design's accumulator, block by block.

    Base rows whose group has a NaN in any output are dropped whole (see the module notes). Returns
    the accumulator and the number of base rows dropped. Infinite outputs are refused.
    """
    values = outputs_in_design_order(design, outputs)
    if np.isinf(values).any():
        raise AugsenseError("outputs contain inf; replace them with NaN to drop those base rows, or fix the recording")
    accumulator = make_accumulator(design, values.shape[2], denominator=denominator, groups=groups)
    dropped = 0
    for block in design.blocks():
        rows = values[block.base_rows]                                   # (r, G, m)
        keep = np.isfinite(rows).all(axis=(1, 2))
        dropped += int((~keep).sum())
        if not keep.any():
            continue
        if not keep.all():
            block = type(block)(block.index, block.base_rows[keep], block.points[keep],
                                None if block.permutations is None else block.permutations[keep])
        accumulator.update(block, torch.from_numpy(np.ascontiguousarray(rows[keep])))
    if accumulator.n < 2:
        raise AugsenseError(f"only {accumulator.n} of {design.n} base rows have a response for every member of their "
                            "group; indices need at least 2 (and far more for useful CIs): record the missing trials")
    return accumulator, dropped


def sensitivity_from_outputs(design: Design, outputs: Outputs, *, denominator: Literal["pooled", "paired"] = "pooled",
                             confidence: float = 0.95, groups: torch.Tensor | None = None) -> SensitivityResult:
    """Sobol indices or Shapley effects (with CIs) from outputs computed outside augsense.

    ``outputs`` in design order, see :func:`outputs_in_design_order`; ``result.n`` is the number of
    base rows used (rows with NaN are dropped whole). ``denominator="paired"`` gives within-image
    indices when the rows of a group share an image (Sobol designs only).
    """
    accumulator, _ = accumulate_outputs(design, outputs, denominator=denominator, groups=groups)
    return accumulator.compute(confidence=confidence)


# -- response tables -----------------------------------------------------------------------------
def read_responses(path: str | Path) -> pd.DataFrame:
    """A response table from CSV or Parquet."""
    path = Path(path)
    if not path.is_file():
        raise AugsenseError(f"response file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise AugsenseError(f"cannot read the responses {str(path)!r}: {error}") from None
    raise AugsenseError(f"responses must be a .csv or .parquet file, got {path.name!r}")


@dataclass
class RecordingSummary:
    """What the response table held, and what the analysis could use."""

    units: list[str]
    key: str
    repeats: int
    trials_expected: int
    trials_recorded: int
    missing_trials: int
    nan_responses: dict[str, int]
    stimuli_incomplete: int
    base_rows: int
    base_rows_dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        nan = sum(self.nan_responses.values())
        worst = max(self.nan_responses, key=self.nan_responses.get) if nan else None  # type: ignore[arg-type]
        return [f"{len(self.units)} units, responses keyed by {self.key}, {self.repeats} repeat(s) per stimulus",
                f"trials: {self.trials_recorded} of {self.trials_expected} recorded ({self.missing_trials} missing)",
                f"NaN responses: {nan}" + (f" (most in {worst!r}: {self.nan_responses[worst]})" if worst else ""),
                f"stimuli without a response in some unit: {self.stimuli_incomplete}",
                f"base rows used: {self.base_rows - self.base_rows_dropped} of {self.base_rows} "
                f"({self.base_rows_dropped} dropped: a member of their pick-freeze group had no response)"]


def _integer_ids(column: pd.Series, key: str) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna() | (values != np.round(values))
    if bad.any():
        example = column[bad].iloc[0]
        raise AugsenseError(f"the {key!r} column must hold integer ids from the design table; row {int(np.flatnonzero(bad)[0])} "
                            f"has {example!r}")
    return values.to_numpy().astype(np.int64)


def _outside(ids: np.ndarray, limit: int, what: str) -> None:
    bad = np.unique(ids[(ids < 0) | (ids >= limit)])
    if bad.size:
        raise AugsenseError(f"{bad.size} {what} id(s) in the responses are not in the design (e.g. "
                            f"{', '.join(map(str, bad[:3]))}; the design has {what} ids 0..{limit - 1}): the responses "
                            "belong to another export, or their ids were renumbered")


def response_matrix(design: StimulusDesign, responses: pd.DataFrame, *, units: Sequence[str] | None = None,
                    trials: pd.DataFrame | None = None) -> tuple[np.ndarray, RecordingSummary]:
    """Average the trials of each stimulus: (n_stimuli, m) float64 in design order (NaN where missing).

    ``responses`` has a ``stimulus`` or ``trial`` id column and one numeric column per unit (``units``
    picks them; by default every column that is not an id or a design-table column). ``trials`` maps
    trial positions to stimulus ids (default: the design's presentation order).
    """
    if not isinstance(responses, pd.DataFrame):
        raise AugsenseError(f"responses must be a pandas DataFrame (or a CSV/Parquet file), got {type(responses).__name__}")
    columns = [str(c) for c in responses.columns]
    responses = responses.set_axis(columns, axis=1)
    if "stimulus" in columns:
        key = "stimulus"
    elif "trial" in columns:
        key = "trial"
    else:
        raise AugsenseError("the responses need a 'stimulus' column (the stimulus id of the design table) or a 'trial' "
                            f"column (the presentation position); columns are {columns[:8]}")
    ids = _integer_ids(responses[key], key)
    if key == "trial":
        _outside(ids, design.n_trials, "trial")
        counts = np.bincount(ids, minlength=design.n_trials)
        if counts.max() > 1:
            trial = int(np.argmax(counts))
            raise AugsenseError(f"trial {trial} appears {counts[trial]} times in the responses; each presented trial "
                                "has one row (name the stimulus instead with a 'stimulus' column to pool repeats)")
        mapping = (trials if trials is not None else design.presentation()).set_index("trial")["stimulus"]
        stimulus = mapping.loc[ids].to_numpy().astype(np.int64)
    else:
        _outside(ids, design.n_stimuli, "stimulus")
        stimulus = ids
        counts = np.bincount(stimulus, minlength=design.n_stimuli)
        if counts.max() > design.repeats:
            s = int(np.argmax(counts))
            advice = ("export with --repeats R to present stimuli repeatedly" if design.repeats == 1
                      else "check for trials recorded twice")
            raise AugsenseError(f"stimulus id {s} appears {counts[s]} times in the responses, but the design was exported "
                                f"with repeats = {design.repeats}: duplicated ids; {advice}")
    reserved = set(ID_COLUMNS) | _design_columns(design)
    if units is None:
        names = [c for c in columns if c not in reserved]
    else:
        names = [str(u) for u in units]
        unknown = [u for u in names if u not in columns]
        if unknown:
            raise AugsenseError(f"unit column(s) {unknown} are not in the responses; columns are {columns[:12]}")
    if not names:
        raise AugsenseError("the responses have no unit columns: add one numeric column per recorded unit besides "
                            f"the {key!r} id")
    non_numeric = [c for c in names if not (pd.api.types.is_numeric_dtype(responses[c])
                                            and not pd.api.types.is_complex_dtype(responses[c]))]
    if non_numeric:
        c = non_numeric[0]
        example = next((v for v in responses[c] if not _is_number(v)), responses[c].iloc[0])
        raise AugsenseError(f"unit column(s) {non_numeric} are not numeric (e.g. {c!r} holds {example!r}); responses must "
                            "be numbers, with empty cells or NaN for missing trials; pick the unit columns with --units")
    values = responses[names].to_numpy(dtype=np.float64)
    if np.isinf(values).any():
        c = names[int(np.flatnonzero(np.isinf(values).any(0))[0])]
        raise AugsenseError(f"unit {c!r} has infinite responses; write missing trials as NaN or leave them empty")
    finite = np.isfinite(values)
    sums = np.zeros((design.n_stimuli, len(names)))
    hits = np.zeros((design.n_stimuli, len(names)))
    np.add.at(sums, stimulus, np.where(finite, values, 0.0))
    np.add.at(hits, stimulus, finite)
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.where(hits > 0, sums / np.maximum(hits, 1), np.nan)
    summary = RecordingSummary(
        units=names, key=key, repeats=design.repeats, trials_expected=design.n_trials, trials_recorded=len(ids),
        missing_trials=design.n_trials - len(ids), nan_responses={c: int((~finite[:, j]).sum()) for j, c in enumerate(names)},
        stimuli_incomplete=int(np.isnan(matrix).any(1).sum()), base_rows=design.design.n)
    return matrix, summary


def _design_columns(design: StimulusDesign) -> set[str]:
    """Names of the design table's columns (a user may have merged them into the responses)."""
    names = {"block", "base_row", "member", "role", "from_b", "image", "source", "order"}
    for factor in design.space.factors:
        names |= {f"{factor.name}.{p}" for p in factor.parameter_names} | {f"{factor.name}.active"}
    return names


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


# -- the analysis --------------------------------------------------------------------------------
@dataclass
class ResponseRun:
    """Indices of recorded units: the estimator result and what is needed to read it."""

    design: StimulusDesign
    result: SensitivityResult
    units: list[str]
    layer: str
    summary: RecordingSummary
    out_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def players(self) -> list[str]:
        return self.design.players

    def to_dataframe(self) -> pd.DataFrame:
        """Tidy table: unit (name), factor, factor2, quantity, estimate, ci_low, ci_high, dead, level."""
        frame = self.result.to_dataframe(output_names=self.units, factor_names=self.players, group_names=[self.layer])
        return frame.rename(columns={"output": "unit"})


def analyse_responses(design: StimulusDesign | str | Path, responses: pd.DataFrame | str | Path, *,
                      units: Sequence[str] | None = None, layer: str = "responses", confidence: float | None = None,
                      out_dir: str | Path | None = None) -> ResponseRun:
    """Sobol indices / Shapley effects of recorded responses to an exported stimulus design.

    Args:
        design: a :class:`StimulusDesign`, or the export folder / design table written by ``export``.
        responses: a DataFrame or a CSV/Parquet file (see :func:`response_matrix`).
        units: the unit columns (default: every non-id column).
        layer: the name the units are reported under (one layer).
        confidence: CI level (default: the export config's, else 0.95).
        out_dir: write a run folder (indices.parquet, layers.parquet, maps.npz, run.json) there.
    """
    started = time.perf_counter()
    trials = None
    if not isinstance(design, StimulusDesign):
        design, trials = load_stimulus_design(design)
    source = str(responses) if isinstance(responses, (str, Path)) else "python"
    frame = read_responses(responses) if isinstance(responses, (str, Path)) else responses
    matrix, summary = response_matrix(design, frame, units=units, trials=trials)
    level = float(confidence if confidence is not None else design.config.get("confidence", 0.95))
    if not 0 < level < 1:
        raise AugsenseError(f"confidence = {level} must lie strictly between 0 and 1")
    m = matrix.shape[1]
    denominator: Literal["pooled", "paired"] = "paired" if design.space.image_mode == "within" else "pooled"
    accumulator, dropped = accumulate_outputs(design.design, matrix, denominator=denominator,
                                              groups=torch.zeros(m, dtype=torch.long))
    summary.base_rows_dropped = dropped
    result = accumulator.compute(confidence=level)
    run = ResponseRun(design, result, summary.units, layer, summary, None,
                      {"total_s": time.perf_counter() - started})
    if out_dir is not None:
        run.out_dir = write_response_run(run, out_dir, source)
    return run


def write_response_run(run: ResponseRun, out: str | Path, source: str = "python") -> Path:
    """Write the run folder of a response analysis: the same files as a CNN run, plus the recording summary.

    Committed as one result set, as ``augsense run`` does (:func:`augsense.io.results.write_run`): under
    the folder's lock, the files are written into ``out/.staging-<pid>/`` and fsynced, then renamed into
    place with ``run.json`` (holding a new ``result_set`` id) last; the report and analysis tables of the
    set it replaces, and its config.toml, are removed. A failure leaves the previous files as they were.
    """
    import os
    import shutil

    from augsense.io.lock import ADVICE, holding, prepare_out_dir
    from augsense.io.provenance import RESULT_SET, fsync_folder, new_result_set_id
    from augsense.io.results import (ANALYSIS_OUTPUTS, DERIVED, mark_committing, remove_stale_staging, versions,
                                     write_result_tables)

    out = prepare_out_dir(out)
    m = len(run.units)
    design = run.design
    config = dict(design.config)
    config.update({"model": "recorded responses", "layers": [run.layer], "images": config.get("images", "exported")})
    info = {
        "status": "complete",
        "config": config,
        "model": {"name": "recorded responses", "input_size": design.size},
        "players": run.players,
        "factors": design.space.to_dict(),
        "layers": {run.layer: {"unit_shape": [m], "units": m, "unit_names": run.units}},
        "design": {**design.design.to_dict(), "fingerprint": design.design.fingerprint(),
                   "group_size": design.group_size, "roles": design.design.roles,
                   "evaluations": design.n_stimuli},
        "images": {"count": len(design.image_sources), "sources": design.image_sources, "skipped": []},
        "clean_top1": None,
        "n_base_rows": int(run.result.n),
        "world_size": 1,
        "device": "cpu",
        "timings": run.timings,
        "versions": versions(),
        "responses": {"source": source, **run.summary.to_dict()},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        RESULT_SET: new_result_set_id(),
    }
    with holding(out, advice=ADVICE):
        remove_stale_staging(out)
        staging = out / f".staging-{os.getpid()}"
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            write_result_tables(run.result, staging, players=run.players, layers=[run.layer],
                                slices={run.layer: slice(0, m)}, unit_shapes={run.layer: (m,)},
                                result_set=info[RESULT_SET])
            (staging / "run.json").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
            names = sorted((p.name for p in staging.iterdir()), key=lambda name: name == "run.json")  # run.json last
            for name in names:
                with open(staging / name, "rb") as handle:
                    os.fsync(handle.fileno())
            if (out / "run.json").exists() and not mark_committing(out, info[RESULT_SET]):
                raise AugsenseError(f"cannot commit the results into {str(out)!r}: run.json could not be updated "
                                    "(the files there are unchanged; free space and run again)")
            for name in names:  # a kill between two renames leaves run.json "committing", never "complete"
                os.replace(staging / name, out / name)
            (out / "config.toml").unlink(missing_ok=True)  # it would describe the run this set replaces
            fsync_folder(out)
        except OSError as error:
            raise AugsenseError(f"cannot write the results into {str(out)!r}: {error.strerror or error} (free space "
                                "and run again)") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for name in DERIVED + ANALYSIS_OUTPUTS:  # computed from the set this one replaces
            stale = out / name
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
    return out
