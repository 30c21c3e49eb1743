"""Run folders: tidy Parquet tables, arrays of the maps, and provenance.

A run folder holds
- ``indices.parquet``: one row per (layer, unit, factor[, factor2], quantity) with estimate, CI and
  a dead-unit flag (quantities: mean, variance, cv, first_order, total_order, second_order,
  shapley, interactions), for the layers with one unit per channel (reduced) and the output;
  per-element layers (reduction none: a unit per channel × position) are arrays only, since their
  long rows were 40-odd per unit (:func:`map_rows` / ``RunFolder.indices`` rebuild them);
- ``layers.parquet``: the layer-aggregated indices Σ_c V_i^(c) / Σ_c V^(c) with CIs (sobol2: also
  second_order, Σ_c V_ij^(c) / Σ_c V^(c) per pair factor < factor2, with CIs);
- ``maps.npz`` (uncompressed): ``<layer>/<quantity>`` arrays shaped (*unit_shape, d) (CIs
  (2, *unit_shape, d)), pairs (*unit_shape, d, d), and ``<layer>/dead``, for every layer;
- ``run.json``: config, factors with bounds, design, versions, device, world size, timings, and
  ``status``: "running" (written at the start, with start time, host and PID), "interrupted"
  (SIGINT/SIGTERM; a checkpoint is kept), "failed" (with ``reason``), "partial" (stopped early on
  purpose) or "complete";
- ``config.toml``: the config that reproduces the run (also written at the start).

The results are committed as one set (:func:`write_run`): every file is written into a staging
folder inside the run folder and fsynced; run.json is then set to "committing" (the old set no longer
reads as complete) and the files are renamed into place with ``run.json`` last, so a failure (disk full,
killed) leaves the previous complete set, or run.json saying "committing"/"failed", which load_run refuses
and the report flags (the tables may mix two sets).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import socket
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from augsense._lazy import pandas as pd  # imported at the first table: after a run's loop
from augsense.errors import AugsenseError
from augsense.io.lock import pid_alive, prepare_out_dir, read_status  # noqa: F401 - part of the run-folder API
from augsense.io.provenance import (MAPS_STAMP, RESULT_SET, current_result_set, foreign_core_message,
                                    foreign_core_tables, new_result_set_id, pop_maps_stamp, result_set_of,
                                    stamped_table)

MAP_QUANTITIES = ("first_order", "total_order", "shapley", "second_order", "interactions", "mean", "variance", "cv",
                  "dead")


def versions() -> dict[str, str]:
    from importlib.metadata import version

    import scipy
    import torch
    import torchvision

    from augsense import __version__

    return {"augsense": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "pandas": version("pandas"), "platform": platform.platform()}


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def per_element_layers(unit_shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Layers with one unit per channel × position (a unit shape of more than one axis): their indices are
    kept as arrays in ``maps.npz`` only, not as rows of ``indices.parquet``."""
    return [layer for layer, shape in unit_shapes.items() if len(tuple(shape)) > 1]


def _output_subset(result: Any, keep: np.ndarray) -> Any:
    """The result restricted to the outputs ``keep`` (m' indices), without the layer aggregates."""
    import dataclasses

    m = result.n_outputs
    changes: dict[str, Any] = {"aggregated": None}
    for f in dataclasses.fields(result):
        value = getattr(result, f.name)
        if not isinstance(value, np.ndarray):
            continue
        if f.name.endswith("_ci") and value.ndim >= 2 and value.shape[1] == m:
            changes[f.name] = value[:, keep]
        elif value.ndim >= 1 and value.shape[0] == m:
            changes[f.name] = value[keep]
    return dataclasses.replace(result, **changes)


def write_result_tables(result: Any, out: str | Path, *, players: list[str], layers: list[str],
                        slices: dict[str, slice], unit_shapes: dict[str, tuple[int, ...]],
                        result_set: str | None = None) -> None:
    """Write a SensitivityResult as ``indices.parquet``, ``layers.parquet`` and ``maps.npz`` in ``out``.

    ``slices`` give each layer's columns among the result's m outputs, ``unit_shapes`` their shape.
    Per-element layers (:func:`per_element_layers`) are written to ``maps.npz`` only; the tidy table
    holds the other layers' units (:func:`map_rows` rebuilds the rest, and :func:`load_run` does it
    on demand). ``maps.npz`` is stored uncompressed: float64 indices barely compress, and zlib took
    longer than the rest of the writing. ``result_set`` (the id run.json will name) is stamped into each:
    the Parquet metadata of the tables, the key ``__result_set__`` of ``maps.npz``, so a table copied in
    from another run is noticed by :func:`load_run` and the report.
    """
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays_only = set(per_element_layers({layer: unit_shapes[layer] for layer in slices}))
    tabled = [layer for layer in slices if layer not in arrays_only]
    keep = (np.concatenate([np.arange(slices[layer].start, slices[layer].stop) for layer in tabled])
            if tabled else np.zeros(0, dtype=np.int64))
    layer_of = np.concatenate([np.full(slices[layer].stop - slices[layer].start, layer, dtype=object)
                               for layer in tabled]) if tabled else np.zeros(0, dtype=object)
    unit_of = np.concatenate([np.arange(slices[layer].stop - slices[layer].start) for layer in tabled]) \
        if tabled else np.zeros(0, dtype=np.int64)
    columns = ["layer", "unit", "factor", "factor2", "quantity", "estimate", "ci_low", "ci_high", "dead"]
    if len(keep):
        units = _output_subset(result, keep).to_dataframe(output_names=np.arange(len(keep)).astype(str),
                                                           factor_names=players)
        units = units[units["level"] == "output"]
        index = units["output"].astype(np.int64).to_numpy()
        tidy = pd.DataFrame({"layer": layer_of[index], "unit": unit_of[index]})
        for column in columns[2:]:
            tidy[column] = units[column].to_numpy()
    else:
        tidy = pd.DataFrame({c: pd.Series(dtype=float if c in ("estimate", "ci_low", "ci_high") else
                                          (bool if c == "dead" else (np.int64 if c == "unit" else object)))
                             for c in columns})
    _atomic_write(out / "indices.parquet", lambda p: pq.write_table(stamped_table(tidy, result_set), p))
    if result.aggregated is not None:
        grouped = result.aggregated.to_dataframe(output_names=layers, factor_names=players)
        grouped = grouped.rename(columns={"output": "layer"}).drop(columns=["level", "dead"])
    else:
        grouped = pd.DataFrame(columns=["layer", "factor", "factor2", "quantity", "estimate", "ci_low", "ci_high"])
    grouped = grouped.reset_index(drop=True)
    _atomic_write(out / "layers.parquet", lambda p: pq.write_table(stamped_table(grouped, result_set), p))

    arrays: dict[str, np.ndarray] = {}
    for layer, cols in slices.items():
        shape = tuple(unit_shapes[layer])
        for name in MAP_QUANTITIES:
            for suffix in ("", "_ci"):
                value = getattr(result, name + suffix, None)
                if value is None:
                    continue
                if suffix:
                    part = value[:, cols]
                    arrays[f"{layer}/{name}{suffix}"] = part.reshape((2,) + shape + part.shape[2:])
                else:
                    part = value[cols]
                    arrays[f"{layer}/{name}"] = part.reshape(shape + part.shape[1:])

    if result_set is not None:
        arrays[MAPS_STAMP] = np.array(result_set)

    def write_maps(path: Path) -> None:
        with open(path, "wb") as handle:  # a handle, so numpy does not append ".npz" to the temporary name
            np.savez(handle, **arrays)

    _atomic_write(out / "maps.npz", write_maps)


#: per-unit quantities of the tidy table, in its order: (name, per factor?, per pair?)
_TABLE_QUANTITIES = (("mean", False, False), ("variance", False, False), ("cv", False, False),
                     ("first_order", True, False), ("total_order", True, False), ("shapley", True, False),
                     ("second_order", False, True), ("interactions", False, True))


def map_rows(maps: dict[str, np.ndarray], layer: str, players: list[str],
             quantities: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The tidy rows of one layer rebuilt from its arrays in ``maps`` (the rows a per-element layer
    would have in ``indices.parquet``): layer, unit (flat index), factor, factor2, quantity, estimate,
    ci_low, ci_high, dead. ``quantities`` restricts them (default: every one the maps hold)."""
    dead_map = maps.get(f"{layer}/dead")
    parts: list[pd.DataFrame] = []
    if dead_map is None:
        return pd.DataFrame(columns=["layer", "unit", "factor", "factor2", "quantity", "estimate", "ci_low",
                                     "ci_high", "dead"])
    dead = np.asarray(dead_map).reshape(-1).astype(bool)
    m, d = dead.size, len(players)
    facs = np.asarray(players, dtype=object)
    units = np.arange(m)
    for name, per_factor, per_pair in _TABLE_QUANTITIES:
        if quantities is not None and name not in quantities:
            continue
        value = maps.get(f"{layer}/{name}")
        if value is None:
            continue
        ci = maps.get(f"{layer}/{name}_ci")
        if per_pair:
            iu, ju = np.triu_indices(d, 1)
            k = iu.size
            est = value.reshape(m, d, d)[:, iu, ju].ravel()
            low, high = ((ci[0].reshape(m, d, d)[:, iu, ju].ravel(), ci[1].reshape(m, d, d)[:, iu, ju].ravel())
                         if ci is not None else (np.full(m * k, np.nan),) * 2)
            parts.append(pd.DataFrame({"unit": np.repeat(units, k), "factor": np.tile(facs[iu], m),
                                       "factor2": np.tile(facs[ju], m), "quantity": name, "estimate": est,
                                       "ci_low": low, "ci_high": high, "dead": np.repeat(dead, k)}))
        elif per_factor:
            low, high = ((ci[0].reshape(-1), ci[1].reshape(-1)) if ci is not None else (np.full(m * d, np.nan),) * 2)
            parts.append(pd.DataFrame({"unit": np.repeat(units, d), "factor": np.tile(facs, m), "factor2": None,
                                       "quantity": name, "estimate": value.reshape(-1), "ci_low": low,
                                       "ci_high": high, "dead": np.repeat(dead, d)}))
        else:
            nan = np.full(m, np.nan)
            parts.append(pd.DataFrame({"unit": units, "factor": None, "factor2": None, "quantity": name,
                                       "estimate": value.reshape(-1), "ci_low": nan, "ci_high": nan, "dead": dead}))
    frame = pd.concat(parts, ignore_index=True) if parts else map_rows({}, layer, players)
    frame.insert(0, "layer", layer)
    return frame


def with_map_rows(indices: pd.DataFrame | None, maps: dict[str, np.ndarray], info: dict[str, Any]) -> pd.DataFrame | None:
    """``indices`` (the stored tidy table) plus the rows of the per-element layers rebuilt from ``maps``
    (those run.json lists with a unit shape of more than one axis and the table lacks)."""
    entries = info.get("layers") if isinstance(info.get("layers"), dict) else {}
    shapes = {layer: tuple(entry.get("unit_shape", ())) for layer, entry in entries.items() if isinstance(entry, dict)}
    stored = set(indices["layer"].astype(str).unique()) if indices is not None and "layer" in indices else set()
    missing = [layer for layer in per_element_layers(shapes) if layer not in stored and f"{layer}/dead" in maps]
    if not missing:
        return indices
    players = [str(p) for p in info.get("players", [])]
    frames = ([indices] if indices is not None and len(indices) else []) + [map_rows(maps, layer, players)
                                                                             for layer in missing]
    return pd.concat(frames, ignore_index=True)


#: The files of one run's result set, in commit order (run.json last: it says the set is whole).
RESULT_FILES = ("indices.parquet", "layers.parquet", "maps.npz", "config.toml", "run.json")
#: Files derived from a result set; a newly committed set removes them (``augsense report`` redraws).
DERIVED = ("report.html", "figures")
#: what the other analyses write into a run folder from its results (augsense mask, single-class, maps,
#: paper): removed with DERIVED when a new result set replaces the one they were computed from, so no
#: report or reader mixes the tables of two runs
ANALYSIS_OUTPUTS = ("masking.parquet", "masking_gap.parquet", "masking_spearman.parquet", "masking_classes.parquet",
                    "masking_pairs.parquet", "masking_pair_rho.parquet", "masking_linkage.parquet",
                    "single_class.parquet", "class_decay.parquet", "map_lda.parquet", "map_lda_confusion.parquet",
                    "map_lda_paper.parquet", "map_lda_paper_confusion.parquet", "map_pixel_correlations.parquet",
                    "map_lda_projection.parquet", "map_statistics.parquet", "paper_spatial", "segments")


def run_info(run: Any, status: str) -> dict[str, Any]:
    """run.json's content for a SensitivityRun (``run.result`` may be None at the start of a run)."""
    result = run.result
    info = {
        "status": status,
        "config": run.config.to_dict(),
        "model": {"name": run.bundle.name, "weights": run.bundle.weights, "input_size": run.bundle.input_size,
                  "mean": run.bundle.mean, "std": run.bundle.std},
        "warnings": list(run.warnings),
        "players": run.players,
        "factors": run.space.to_dict(),
        "layers": {layer: {"unit_shape": list(run.unit_shapes[layer]), "units": math.prod(run.unit_shapes[layer]),
                           **({"layout": run.layouts[layer]} if layer in getattr(run, "layouts", {}) else {})}
                   for layer in run.layers},
        "plan": run.plan.to_dict() if getattr(run, "plan", None) is not None else None,
        "design": {**run.design.to_dict(), "fingerprint": run.design.fingerprint(), "group_size": run.design.group_size,
                   "roles": run.design.roles, "evaluations": run.design.n_evaluations},
        "images": {"count": len(run.images), "sources": run.images.sources,
                   "skipped": [{"path": p, "reason": r} for p, r in run.images.skipped],
                   "label_files": list(getattr(run.images, "label_files", None) or [])},
        "clean_top1": run.clean_accuracy,
        "n_base_rows": int(result.n) if result is not None else None,
        "world_size": run.shard.world_size,
        "device": run.device,
        "timings": run.timings,
        "versions": versions(),
    }
    return info


def mark_committing(out: str | Path, result_set: str) -> bool:
    """Turn run.json (maybe "complete") into "committing" before result files are renamed in one by one, so
    a process killed between two renames leaves a folder that says its tables may mix two sets, never one
    that reads as complete; False if run.json could not be written."""
    return mark_run(out, "committing", committing=_now(), reason="a commit of new results did not finish: the "
                    "tables may mix two runs", **{RESULT_SET: result_set})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _fsync_path(path: Path) -> None:
    """fsync a file or folder (best effort for folders: some file systems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def _write_json(path: Path, info: dict[str, Any]) -> None:
    """Write JSON atomically and durably (temporary name with this PID, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(info, indent=2, default=str))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def mark_run(out: str | Path, status: str, **fields: Any) -> bool:
    """Set run.json's ``status`` (and ``fields``) keeping the rest; best effort: False if it failed."""
    path = Path(out) / "run.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(info, dict):
            info = {}
    except (OSError, ValueError):
        info = {}
    info.update(status=status, **fields)
    try:
        _write_json(path, info)
    except OSError:
        return False
    return True


def expected_bytes(n_units: int, n_players: int, *, pairwise: bool = False) -> int:
    """A generous estimate of the disk a run needs: results, checkpoint and its temporary copy.

    n_units × players (× players for pairwise estimators) × 12 quantities (estimates and CI bounds)
    × 8 bytes, × 4 for the long-form tables, the checkpoint sums and a staged copy, + 1 MiB.
    """
    per_unit = n_players * (n_players if pairwise else 1) * 12 * 8
    return int(n_units) * per_unit * 4 + (1 << 20)


def check_free_space(out: str | Path, need: int) -> None:
    """Refuse (one line) when the file system of ``out`` has fewer than ``need`` bytes free."""
    try:
        free = shutil.disk_usage(out).free
    except OSError:
        return  # cannot tell; the writes themselves will say
    if free < need:
        raise AugsenseError(f"not enough free space for the run folder {str(out)!r}: {free / 1e6:.1f} MB free, about "
                            f"{need / 1e6:.1f} MB needed for its checkpoints and results; free space or choose "
                            "another --out")


def write_run_start(run: Any, out: str | Path) -> None:
    """At the start of a run: ``config.toml`` and ``run.json`` with status "running", start time, host, PID.

    Raises :class:`AugsenseError` (one line) when they cannot be written.
    """
    out = Path(out)
    info = run_info(run, "running")
    info.update(started=_now(), host=socket.gethostname(), pid=os.getpid())
    kept = current_result_set(out)  # the result files in the folder stay those of that set until the commit
    if kept is not None:
        info[RESULT_SET] = kept
    try:
        tmp = out / f".config.toml.tmp{os.getpid()}"
        tmp.write_text(run.config.to_toml(), encoding="utf-8")
        os.replace(tmp, out / "config.toml")
        _write_json(out / "run.json", info)
    except OSError as error:
        raise AugsenseError(f"cannot write into the run folder {str(out)!r}: {error.strerror or error}") from None


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove ``.staging-<pid>`` folders whose writer no longer runs on this host (killed during a
    commit); a live writer's folder is left alone. Returns the removed folders."""
    removed = []
    for folder in out.glob(".staging-*"):
        pid = folder.name.removeprefix(".staging-")
        if folder.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def write_run(run: Any, out: str | Path, *, status: str | None = None) -> None:
    """Commit a SensitivityRun's results and provenance into ``out`` as one set.

    Every file of :data:`RESULT_FILES` is written into ``out/.staging-<pid>/`` and fsynced, then
    renamed into ``out`` with ``run.json`` last, and the folder is fsynced. A failure while writing
    leaves the files in ``out`` as they were (a previous complete set stays whole) and marks an
    unfinished run.json "failed" with the reason; it raises :class:`AugsenseError` (one line).
    Report files of an earlier set (``report.html``, ``figures/``) are removed after the commit.
    """
    out = Path(out)
    status = status or ("complete" if run.complete else "partial")
    previous = read_status(out)
    staging = out / f".staging-{os.getpid()}"
    info = run_info(run, status)
    try:  # keep when, where and by whom the run was started (written by write_run_start)
        begun = json.loads((out / "run.json").read_text(encoding="utf-8"))
        begun = begun if isinstance(begun, dict) and begun.get("status") != "complete" else {}
    except (OSError, ValueError):
        begun = {}
    info.update(started=begun.get("started"), host=socket.gethostname(), pid=os.getpid(), finished=_now())
    info[RESULT_SET] = new_result_set_id()  # what the analysis tables computed from this set record
    remove_stale_staging(out)
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        write_result_tables(run.result, staging, players=run.players, layers=run.layers, slices=run.slices,
                            unit_shapes=run.unit_shapes, result_set=info[RESULT_SET])
        (staging / "config.toml").write_text(run.config.to_toml(), encoding="utf-8")
        (staging / "run.json").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        for name in RESULT_FILES:
            _fsync_path(staging / name)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        reason = f"writing the results failed: {error.strerror or error}"
        if previous == "complete":
            kept = "the previous complete results are unchanged"
        else:
            kept = "run.json says 'failed'" if mark_run(out, "failed", reason=reason, failed=_now()) else \
                "run.json could not be updated either"
        raise AugsenseError(f"cannot write the results into {str(out)!r}: {error.strerror or error} ({kept}; "
                            "free space, then run again, with --resume if the folder has a checkpoint)") from None
    # The files are renamed one by one: first turn the old run.json (maybe "complete") into "committing", so a
    # process killed between two renames leaves a folder that says its tables may mix two sets, never one that
    # reads as a complete run (run.json, renamed last, says "complete" again once every table is in place).
    if not mark_committing(out, info[RESULT_SET]):
        shutil.rmtree(staging, ignore_errors=True)
        raise AugsenseError(f"cannot commit the results into {str(out)!r}: run.json could not be updated (the "
                            "files there are unchanged; free space, then run again, with --resume if the folder "
                            "has a checkpoint)")
    moved: list[str] = []
    try:
        for name in RESULT_FILES:
            os.replace(staging / name, out / name)
            moved.append(name)
        _fsync_path(out)
    except OSError as error:
        reason = f"committing the results failed after {', '.join(moved) or 'no file'}: {error.strerror or error}"
        mark_run(out, "failed", reason=reason, failed=_now())
        raise AugsenseError(f"cannot commit the results into {str(out)!r}: {error.strerror or error} (run.json "
                            "says 'failed'; run again, with --resume if the folder has a checkpoint)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for name in DERIVED + ANALYSIS_OUTPUTS:
        stale = out / name
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@dataclass
class RunFolder:
    """A run folder read back: provenance, tables and maps (whatever exists)."""

    path: Path
    info: dict[str, Any]
    stored_indices: pd.DataFrame | None = None  # indices.parquet as stored (no per-element layers)
    layers: pd.DataFrame | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    _indices: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def indices(self) -> pd.DataFrame | None:
        """The tidy table of every unit: the stored rows plus the per-element layers' rows rebuilt from
        the maps (built on first use; :meth:`unit_rows` reads one layer without building it all)."""
        if self._indices is None:
            self._indices = with_map_rows(self.stored_indices, self.maps, self.info)
        return self._indices

    @indices.setter
    def indices(self, table: pd.DataFrame | None) -> None:
        self.stored_indices, self._indices = table, None

    def unit_rows(self, layer: str, quantities: tuple[str, ...] | None = None) -> pd.DataFrame:
        """The tidy rows of one layer (from the table, or rebuilt from the maps of a per-element layer)."""
        table = self.stored_indices
        if table is not None and "layer" in table and (table["layer"] == layer).any():
            rows = table[table["layer"] == layer]
            return rows if quantities is None else rows[rows["quantity"].isin(quantities)]
        return map_rows(self.maps, layer, self.players, quantities)

    @property
    def players(self) -> list[str]:
        return list(self.info.get("players", []))

    @property
    def layer_names(self) -> list[str]:
        return list(self.info.get("layers", {}))

    def map(self, layer: str, quantity: str) -> np.ndarray:
        """A layer's map for one quantity: (*unit_shape, d)."""
        key = f"{layer}/{quantity}"
        if key not in self.maps:
            have = sorted({k.split("/", 1)[1] for k in self.maps if k.startswith(layer + "/")})
            raise AugsenseError(f"run {str(self.path)!r} has no {quantity!r} map for layer {layer!r}"
                                + (f" (it has: {', '.join(have)})" if have else ""))
        return self.maps[key]


def load_run(path: str | Path) -> RunFolder:
    """Read a run folder; a folder without run.json is an error, missing tables are listed."""
    path = Path(path)
    info_path = path / "run.json"
    if not info_path.is_file():
        raise AugsenseError(f"{str(path)!r} is not a run folder (no run.json); run `augsense run` or `augsense demo` first")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as error:
        raise AugsenseError(f"{str(info_path)!r} is damaged: {error}") from error
    except OSError as error:
        raise AugsenseError(f"cannot read {str(info_path)!r}: {error.strerror or error}") from None
    from augsense.report.data import malformed_entries

    if not isinstance(info, dict):
        raise AugsenseError(f"run.json in {str(path)!r} is malformed: it must be a JSON object, got "
                            f"{type(info).__name__}")
    malformed = malformed_entries(info)
    if malformed:  # the analyses that read a run folder need its provenance whole, unlike the report
        key, expected = malformed[0]
        raise AugsenseError(f"run.json in {str(path)!r} is malformed: {key} must be {expected}, got "
                            f"{json.dumps(info[key], default=str)[:60]}")
    if info.get("status") != "complete" and info.get("committing"):
        raise AugsenseError(f"the results in {str(path)!r} are incomplete: a commit of new results was stopped "
                            f"midway (status: {info.get('status')}), so its tables may mix two runs; run it again "
                            "with --overwrite (or --resume if the folder has a checkpoint)")
    folder = RunFolder(path, info)
    for name, attribute in (("indices.parquet", "stored_indices"), ("layers.parquet", "layers")):
        try:
            setattr(folder, attribute, pd.read_parquet(path / name))
        except (OSError, ValueError) as error:
            folder.missing.append(f"{name} ({type(error).__name__})")
    try:
        with np.load(path / "maps.npz") as data:
            folder.maps = {key: data[key] for key in data.files}
    except FileNotFoundError as error:
        folder.missing.append(f"maps.npz ({type(error).__name__})")
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:  # truncated or garbage
        raise AugsenseError(f"maps.npz in {str(path)!r} is damaged or unreadable ({type(error).__name__}: "
                            f"{str(error)[:120]}); run it again with --overwrite to rewrite its results") from None
    foreign = foreign_core_tables(path, result_set_of(info), pop_maps_stamp(folder.maps))
    if foreign:
        raise AugsenseError(f"{str(path)!r} holds {foreign_core_message(foreign, result_set_of(info))}")
    if current_result_set(path) != result_set_of(info):  # a new set was committed while the tables were read
        raise AugsenseError(f"the results in {str(path)!r} were replaced while they were read (another run committed "
                            "into the folder); run this again")
    return folder
