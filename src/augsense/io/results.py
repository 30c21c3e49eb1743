"""Run folders: tidy Parquet tables, arrays of the maps, and provenance.

A run folder holds
- ``indices.parquet``: one row per (layer, unit, factor[, factor2], quantity) with estimate, CI and
  a dead-unit flag (quantities: mean, variance, cv, first_order, total_order, second_order,
  shapley, interactions);
- ``layers.parquet``: the layer-aggregated indices Σ_c V_i^(c) / Σ_c V^(c) with CIs;
- ``maps.npz``: ``<layer>/<quantity>`` arrays shaped (*unit_shape, d) (CIs (2, *unit_shape, d));
- ``run.json``: config, factors with bounds, design, versions, device, world size, timings.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from augsense.errors import AugsenseError

MAP_QUANTITIES = ("first_order", "total_order", "shapley", "second_order", "interactions", "mean", "variance", "cv",
                  "dead")


def versions() -> dict[str, str]:
    import scipy
    import torch
    import torchvision

    from augsense import __version__

    return {"augsense": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "pandas": pd.__version__, "platform": platform.platform()}


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def write_result_tables(result: Any, out: str | Path, *, players: list[str], layers: list[str],
                        slices: dict[str, slice], unit_shapes: dict[str, tuple[int, ...]]) -> None:
    """Write a SensitivityResult as ``indices.parquet``, ``layers.parquet`` and ``maps.npz`` in ``out``.

    ``slices`` give each layer's columns among the result's m outputs, ``unit_shapes`` their shape.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    m = result.n_outputs
    layer_of = np.empty(m, dtype=object)
    unit_of = np.empty(m, dtype=np.int64)
    for layer, cols in slices.items():
        layer_of[cols] = layer
        unit_of[cols] = np.arange(cols.stop - cols.start)
    frame = result.to_dataframe(output_names=np.arange(m).astype(str), factor_names=players, group_names=layers)
    units = frame[frame["level"] == "output"]
    index = units["output"].astype(np.int64).to_numpy()
    tidy = pd.DataFrame({"layer": layer_of[index], "unit": unit_of[index]})
    for column in ("factor", "factor2", "quantity", "estimate", "ci_low", "ci_high", "dead"):
        tidy[column] = units[column].to_numpy()
    _atomic_write(out / "indices.parquet", lambda p: tidy.to_parquet(p, index=False))
    grouped = frame[frame["level"] == "group"].rename(columns={"output": "layer"}).drop(columns=["level", "dead"])
    _atomic_write(out / "layers.parquet", lambda p: grouped.reset_index(drop=True).to_parquet(p, index=False))

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
    def write_maps(path: Path) -> None:
        with open(path, "wb") as handle:  # a handle, so numpy does not append ".npz" to the temporary name
            np.savez_compressed(handle, **arrays)

    _atomic_write(out / "maps.npz", write_maps)


def write_run(run: Any, out: str | Path) -> None:
    """Write a SensitivityRun's results and provenance into ``out``."""
    out = Path(out)
    result = run.result
    write_result_tables(result, out, players=run.players, layers=run.layers, slices=run.slices,
                        unit_shapes=run.unit_shapes)

    info = {
        "status": "complete" if run.complete else "partial",
        "config": run.config.to_dict(),
        "model": {"name": run.bundle.name, "input_size": run.bundle.input_size, "mean": run.bundle.mean,
                  "std": run.bundle.std},
        "players": run.players,
        "factors": run.space.to_dict(),
        "layers": {layer: {"unit_shape": list(run.unit_shapes[layer]), "units": math.prod(run.unit_shapes[layer])}
                   for layer in run.layers},
        "plan": run.plan.to_dict() if getattr(run, "plan", None) is not None else None,
        "design": {**run.design.to_dict(), "fingerprint": run.design.fingerprint(), "group_size": run.design.group_size,
                   "roles": run.design.roles, "evaluations": run.design.n_evaluations},
        "images": {"count": len(run.images), "sources": run.images.sources,
                   "skipped": [{"path": p, "reason": r} for p, r in run.images.skipped]},
        "clean_top1": run.clean_accuracy,
        "n_base_rows": int(result.n),
        "world_size": run.shard.world_size,
        "device": run.device,
        "timings": run.timings,
        "versions": versions(),
    }
    _atomic_write(out / "run.json", lambda p: Path(p).write_text(json.dumps(info, indent=2, default=str)))
    (out / "config.toml").write_text(run.config.to_toml())


@dataclass
class RunFolder:
    """A run folder read back: provenance, tables and maps (whatever exists)."""

    path: Path
    info: dict[str, Any]
    indices: pd.DataFrame | None = None
    layers: pd.DataFrame | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

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
    folder = RunFolder(path, info)
    for name, attribute in (("indices.parquet", "indices"), ("layers.parquet", "layers")):
        try:
            setattr(folder, attribute, pd.read_parquet(path / name))
        except (OSError, ValueError) as error:
            folder.missing.append(f"{name} ({type(error).__name__})")
    try:
        with np.load(path / "maps.npz") as data:
            folder.maps = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        folder.missing.append(f"maps.npz ({type(error).__name__})")
    return folder
