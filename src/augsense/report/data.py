"""Read a run folder for the report, tolerating whatever is missing, partial or damaged.

Unlike ``augsense.io.results.load_run`` this never fails on a damaged table: every problem becomes
a notice shown at the top of the report, and the sections that need the missing piece are omitted.
Only a folder with neither ``run.json`` nor ``config.toml`` is an error.

The tables the other analyses compute from the run's results (:data:`DERIVED_TABLES`, and every table
in the ``segments/`` sub-folder ``augsense paper`` writes) are shown only when they record the run's
result set (:mod:`augsense.io.provenance`): one of another set (an older run's, copied in, edited) is
left out, named in the banner's warnings (:func:`augsense.report.trust.foreign_tables_warning`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from augsense.errors import AugsenseError
from augsense.io.provenance import belongs, result_set_of, table_stamp
from augsense.io.results import ANALYSIS_OUTPUTS

#: Per-factor quantities in the order the report shows them.
FACTOR_QUANTITIES = ("first_order", "total_order", "shapley")
#: Pairwise quantities (d × d per unit).
PAIR_QUANTITIES = ("interactions", "second_order")
#: Results of the other analyses, shown when their files exist in the run folder.
EXTRA_RESULTS = ("masking", "single_class", "contrast", "map_statistics")

#: Tables computed from the run's result set by mask, single-class, maps and paper: shown only when they
#: record that set (besides these, everything in the segments/ sub-folder).
DERIVED_TABLES = frozenset(name.removesuffix(".parquet") for name in ANALYSIS_OUTPUTS if name.endswith(".parquet"))
#: Sub-folders whose tables are all derived from the run's result set.
DERIVED_FOLDERS = ("segments",)

QUANTITY_LABELS = {"first_order": "first-order S", "total_order": "total-order ST", "shapley": "Shapley effect",
                   "interactions": "pairwise Shapley interaction", "second_order": "second-order S2"}


#: Analyses with forward passes of their own, whose tables can be written into any folder: table file → the JSON
#: beside it that records the model (``model.weights_sha256``). Shown in a run's report only for the run's weights.
OWN_MODEL_TABLES = {"contrast.parquet": "contrast.json", "segments.parquet": "segments.json",
                    "segments_indices.parquet": "segments.json", "segments_neurons.parquet": "segments.json"}


def model_mismatch(table: str, record: Any, info: dict[str, Any]) -> str | None:
    """Why ``table`` (a key of :data:`OWN_MODEL_TABLES`) in a run folder describes another network than the run's,
    or None: the weights' SHA-256 in its JSON ``record`` is compared with the run plan's. None when either is not
    recorded (:func:`model_unchecked` says so)."""
    theirs, ours = _recorded_weights(record), _run_weights(info)
    if theirs is None or ours is None or theirs == ours:
        return None
    model = record["model"]
    name = f" ({model.get('name')}, weights {model.get('weights')})" if model.get("name") else ""
    command = "contrast" if table.startswith("contrast") else "segments"
    return (f"{table} not shown: it was computed with other weights{name}: SHA-256 {theirs[:12]}…, this run's "
            f"{ours[:12]}…; run augsense {command} --out on this folder with the run's model to recompute it")


def model_unchecked(table: str, record: Any, info: dict[str, Any]) -> str | None:
    """A notice when it cannot be told whether ``table`` describes the run's network, or None."""
    beside = OWN_MODEL_TABLES[table]
    if record is None:
        return f"{table} has no {beside} beside it: the model it was computed with is not recorded."
    if not isinstance(record, dict):
        return f"{beside} is not a JSON object: the model {table} was computed with cannot be checked."
    if _recorded_weights(record) is None or _run_weights(info) is None:
        return (f"{beside} or run.json does not record the model's weights (written by an earlier version): "
                f"whether {table} was computed with this run's model cannot be checked.")
    return None


def own_model(table: str, record: Any, info: dict[str, Any], notices: list[str]) -> bool:
    """Whether ``table`` (a key of :data:`OWN_MODEL_TABLES`, its JSON ``record``) may be shown in the run's report:
    False for another network's weights (the reason goes into ``info``'s warnings, for the banner); True otherwise,
    with a notice when it cannot be checked."""
    reason = model_mismatch(table, record, info)
    if reason:
        info["warnings"] = [*(info.get("warnings") or []), reason]
        return False
    notice = model_unchecked(table, record, info)
    if notice and notice not in notices:
        notices.append(notice)
    return True


def _recorded_weights(record: Any) -> str | None:
    model = record.get("model") if isinstance(record, dict) else None
    digest = model.get("weights_sha256") if isinstance(model, dict) else None
    return digest if isinstance(digest, str) else None


def _run_weights(info: dict[str, Any]) -> str | None:
    plan = info.get("plan")
    digest = plan.get("weights") if isinstance(plan, dict) else None
    return digest if isinstance(digest, str) else None


@dataclass
class ReportData:
    """What the report can show: provenance, tables, maps and extra results, plus notices.

    maps: ``<layer>/<quantity>`` arrays shaped (*unit_shape, d) or (*unit_shape, d, d); CIs (2, ...).
    extras: ``{name: table}`` for ``<name>.parquet`` / ``<name>.csv``; extra_json: ``<name>.json``.
    """

    path: Path
    info: dict[str, Any]
    indices: pd.DataFrame | None = None
    layers: pd.DataFrame | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    extras: dict[str, pd.DataFrame] = field(default_factory=dict)
    extra_json: dict[str, Any] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    #: analysis tables left out: (file relative to the run folder, the result set it records)
    foreign: list[tuple[str, str | None]] = field(default_factory=list)
    _tables: dict[str, pd.DataFrame | None] = field(default_factory=dict, repr=False)

    @property
    def result_set(self) -> str | None:
        """The id of the run's result set (:func:`augsense.io.provenance.result_set_of`)."""
        return result_set_of(self.info)

    def analysis_table(self, name: str) -> pd.DataFrame | None:
        """``<name>.parquet`` from the run folder, else from its ``segments/`` sub-folder; None when absent,
        unreadable (a notice says so), of another result set (listed in ``foreign``) or, for a table of an
        analysis with its own forward passes at the folder's top (``augsense segments --out RUN``), of another
        network (named in the banner's warnings)."""
        if name not in self._tables:
            table = None
            for relative in (f"{name}.parquet", f"segments/{name}.parquet"):
                if (self.path / relative).is_file():
                    if relative in OWN_MODEL_TABLES and not own_model(relative, self._record(relative), self.info,
                                                                      self.notices):
                        break
                    table = read_table(self, relative, pd.read_parquet)
                    break
            self._tables[name] = table
        return self._tables[name]

    def _record(self, table: str) -> Any:
        """The JSON beside ``table`` (a key of :data:`OWN_MODEL_TABLES`): None when absent, [] when unreadable."""
        try:
            return json.loads((self.path / OWN_MODEL_TABLES[table]).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return []  # unreadable: not an object

    @property
    def players(self) -> list[str]:
        players = list(self.info.get("players") or [])
        if not players and self.indices is not None and "factor" in self.indices:
            players = [str(f) for f in pd.unique(self.indices["factor"].dropna())]
        return players

    @property
    def layer_names(self) -> list[str]:
        names = list(self.info.get("layers") or [])
        if not names and self.layers is not None and "layer" in self.layers:
            names = [str(x) for x in pd.unique(self.layers["layer"])]
        return names

    @property
    def status(self) -> str:
        return str(self.info.get("status", "unknown"))

    def unit_shape(self, layer: str) -> tuple[int, ...] | None:
        layers = self.info.get("layers")
        entry = layers.get(layer) if isinstance(layers, dict) else None
        if isinstance(entry, dict) and "unit_shape" in entry:
            return tuple(int(s) for s in entry["unit_shape"])
        dead = self.maps.get(f"{layer}/dead")
        return tuple(dead.shape) if dead is not None else None

    def map(self, layer: str, quantity: str) -> np.ndarray | None:
        return self.maps.get(f"{layer}/{quantity}")

    def factor_quantities(self) -> list[str]:
        """Per-factor quantities this run has, from the tables or the maps."""
        have: set[str] = set()
        for table in (self.layers, self.indices):
            if table is not None and "quantity" in table:
                have |= {str(q) for q in table["quantity"].unique()}  # unique first: millions of rows
        have |= {key.split("/", 1)[1] for key in self.maps}
        return [q for q in FACTOR_QUANTITIES if q in have]

    def main_quantity(self) -> str | None:
        """The index that ranks units: Shapley when present, else total order, else first order."""
        quantities = self.factor_quantities()
        for q in ("shapley", "total_order", "first_order"):
            if q in quantities:
                return q
        return None

    def pair_quantity(self) -> str | None:
        have = {key.split("/", 1)[1] for key in self.maps}
        return next((q for q in PAIR_QUANTITIES if q in have), None)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _layers_ok(value: Any) -> bool:
    if _strings(value):
        return True
    return isinstance(value, dict) and all(
        isinstance(entry, dict) and (
            "unit_shape" not in entry or (isinstance(entry["unit_shape"], list)
                                          and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                  for s in entry["unit_shape"])))
        for entry in value.values())


def _factors_ok(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    specs, order = value.get("factors", []), value.get("order", [])
    return isinstance(specs, list) and (order is None or _strings(order)) and all(
        isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("parameters", []), list)
        and _is_number(spec.get("p", 0.5))
        and all(isinstance(p, dict) and isinstance(p.get("name"), str) and _is_number(p.get("low"))
                and _is_number(p.get("high")) for p in spec.get("parameters", []))
        for spec in specs)


#: What the report reads from run.json: key → (check, what it must be). Absent keys are fine.
RUN_JSON_SCHEMA: dict[str, tuple[Any, str]] = {
    "status": (lambda v: isinstance(v, str), "a string"),
    "config": (lambda v: isinstance(v, dict) and all(_strings(v[k]) for k in ("layers", "factors") if k in v),
               "a table of the run's settings (layers and factors lists of names)"),
    "model": (lambda v: isinstance(v, dict) and (v.get("input_size") is None or
                                                 (isinstance(v["input_size"], int) and v["input_size"] > 0)),
              "a table with the model's name and input_size (a positive integer)"),
    "players": (_strings, "a list of factor names"),
    "factors": (_factors_ok, "a table with a 'factors' list of {name, parameters: [{name, low, high}]} tables"),
    "layers": (_layers_ok, "a table of layer names to {unit_shape: [sizes]} (or a list of layer names)"),
    "design": (lambda v: isinstance(v, dict), "a table"),
    "images": (lambda v: isinstance(v, dict) and (v.get("sources") is None or _strings(v["sources"]))
               and isinstance(v.get("skipped", []), list), "a table with a 'sources' list of names"),
    "clean_top1": (lambda v: v is None or _is_number(v), "a number or null"),
    "world_size": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
                   "a positive integer"),
    "device": (lambda v: isinstance(v, str), "a string"),
    "timings": (lambda v: isinstance(v, dict) and all(_is_number(x) for x in v.values()),
                "a table of numbers (seconds, images/s)"),
    "versions": (lambda v: isinstance(v, dict), "a table"),
    "warnings": (_strings, "a list of strings"),
    "plan": (lambda v: v is None or isinstance(v, dict), "a table or null"),
}


def malformed_entries(info: dict[str, Any]) -> list[tuple[str, str]]:
    """The run.json keys whose values the report cannot use: [(key, what it must be)]."""
    bad = []
    for key, (check, expected) in RUN_JSON_SCHEMA.items():
        if key in info and not check(info[key]):
            bad.append((key, expected))
    return bad


def _info_from_config(path: Path) -> dict[str, Any]:
    """Provenance rebuilt from config.toml when run.json is absent (a run killed before its end)."""
    from augsense.analyses.sensitivity import build_factor_space
    from augsense.config import SensitivityConfig

    config = SensitivityConfig.from_toml(path)
    space = build_factor_space(config)
    return {"status": "incomplete", "config": config.to_dict(), "players": space.players,
            "factors": space.to_dict(), "layers": {layer: {} for layer in config.layers}}


def _status_notice(path: Path, info: dict[str, Any]) -> str | None:
    """A notice for a run that is running, was killed, interrupted or failed (run.json ``status``)."""
    from augsense.io.lock import holder_of, host_name, pid_alive

    status = info.get("status")
    resume = "finish it with `augsense run CONFIG --resume --out RUN_DIR`" if (path / "checkpoint.pt").exists() \
        else "it left no checkpoint, so run it again"
    if info.get("committing") and status != "complete":
        return (f"A commit of new results into this folder was stopped midway (status: {status}, "
                f"{info.get('committing')}): its tables may mix two runs and must not be trusted; run it again with "
                "`augsense run CONFIG --overwrite --out RUN_DIR`"
                + (" (or --resume: its checkpoint is here)." if (path / "checkpoint.pt").exists() else "."))
    if status == "running":
        holder = holder_of(path) or {}
        pid, host = info.get("pid", holder.get("pid")), info.get("host", holder.get("host"))
        alive = isinstance(pid, int) and host == host_name() and pid_alive(pid) and holder.get("pid") == pid
        if alive:
            return (f"This run is still running (PID {pid} on {host}, started {info.get('started', '?')}); the "
                    "report shows what it has written so far.")
        return (f"This run did not finish (status: running, started {info.get('started', '?')} by PID {pid} on host "
                f"{host}, which is no longer running it: killed or crashed); {resume}.")
    if status == "interrupted":
        return f"This run was interrupted ({info.get('reason', 'a signal')}); {resume}."
    if status == "failed":
        return f"This run failed: {info.get('reason', 'no reason recorded')}; {resume}."
    if status == "complete" and (path / "checkpoint.pt").exists():
        return ("A later run into this folder (started with --overwrite) did not finish: its checkpoint is here, and "
                "the results shown are those of the earlier, complete run.")
    return None


def derived(relative: str) -> bool:
    """Whether the table at ``relative`` (to the run folder) is computed from the run's result set."""
    parts = Path(relative).parts
    return (len(parts) > 1 and parts[0] in DERIVED_FOLDERS) or Path(relative).stem in DERIVED_TABLES


def read_table(data: ReportData, relative: str, reader: Any) -> pd.DataFrame | None:
    """Read ``data.path / relative`` with ``reader``; None (with a notice, or listed in ``data.foreign``
    for a derived table that does not record the run's result set) when it cannot be shown."""
    file = data.path / relative
    try:
        if derived(relative):
            stamp = table_stamp(file)
            if not belongs(stamp, data.result_set):
                data.foreign.append((relative, stamp))
                return None
        return reader(file)
    except Exception as error:  # noqa: BLE001 - pyarrow raises many kinds on damaged files
        data.notices.append(f"{relative} could not be read ({type(error).__name__}: {error}).")
        return None


def read_report_data(path: str | Path) -> ReportData:
    """Read whatever a run folder holds; problems become ``notices`` rather than errors."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AugsenseError(f"{str(path)!r} is a file, not a run folder; give the folder a run wrote (--out DIR)")
    if not path.is_dir():
        raise AugsenseError(f"run folder {str(path)!r} does not exist; run `augsense run --out DIR` or "
                            "`augsense demo --out DIR` first")
    notices: list[str] = []
    info: dict[str, Any] | None = None
    damage = ""
    try:
        info = json.loads((path / "run.json").read_text(encoding="utf-8"))
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        notices.append("run.json is missing: the run did not reach its end. The header is rebuilt from "
                       "config.toml; finish it with `augsense run --resume --out RUN_DIR`.")
    except (OSError, ValueError) as error:
        damage = f"{type(error).__name__}: {error}" if isinstance(error, OSError) else str(error)
        notices.append(f"run.json is damaged ({damage}); the header is rebuilt from config.toml.")
        info = None
    if info is None:
        if not (path / "config.toml").is_file():
            if (path / "run.json").exists():
                raise AugsenseError(f"run.json in {str(path)!r} is malformed or unreadable ({damage}) and there is no "
                                    "config.toml to rebuild the run from")
            raise AugsenseError(f"{str(path)!r} is not a run folder (no run.json, no config.toml); run "
                                "`augsense run --out DIR` or `augsense demo --out DIR` first")
        try:
            info = _info_from_config(path / "config.toml")
        except (AugsenseError, OSError, ValueError) as error:
            notices.append(f"config.toml could not be read either ({error}).")
            info = {"status": "incomplete"}
    for key, expected in malformed_entries(info):
        notices.append(f"run.json in {str(path)!r} is malformed: {key} must be {expected}, got "
                       f"{json.dumps(info[key], default=str)[:60]}; that entry is ignored.")
        del info[key]
    data = ReportData(path, info, notices=notices)
    if info.get("status") == "partial":
        notices.append("This run stopped before it finished (status: partial). The numbers below come from "
                       "the design blocks that were done, so their confidence intervals are wider; finish it "
                       "with `augsense run --resume --out RUN_DIR`.")
    notice = _status_notice(path, info)
    if notice:
        notices.append(notice)
    for name, attribute in (("indices.parquet", "indices"), ("layers.parquet", "layers")):
        try:
            setattr(data, attribute, pd.read_parquet(path / name))
        except FileNotFoundError:
            notices.append(f"{name} is missing: the figures that need it are omitted.")
        except Exception as error:  # noqa: BLE001 - pyarrow raises many kinds on damaged files
            notices.append(f"{name} could not be read ({type(error).__name__}: {error}); the figures that need "
                           "it are omitted.")
    try:
        with np.load(path / "maps.npz") as arrays:
            data.maps = {key: arrays[key] for key in arrays.files}
    except FileNotFoundError:
        notices.append("maps.npz is missing: unit heat maps, spatial maps and interaction matrices are omitted.")
    except Exception as error:  # noqa: BLE001 - a truncated zip raises BadZipFile, EOFError, ValueError …
        notices.append(f"maps.npz could not be read ({type(error).__name__}: {error}); unit heat maps, spatial "
                       "maps and interaction matrices are omitted.")
    from augsense.io.provenance import foreign_core_message, foreign_core_tables, pop_maps_stamp

    foreign = foreign_core_tables(path, data.result_set, pop_maps_stamp(data.maps))
    if foreign:  # shown, but under a banner: the header (run.json) describes another run than these numbers
        info["warnings"] = [*(info.get("warnings") or []), foreign_core_message(foreign, data.result_set)]
    if data.maps:  # per-element layers are stored as arrays only: their tidy rows come from the maps
        from augsense.io.results import with_map_rows

        data.indices = with_map_rows(data.indices, data.maps, info)
    from augsense.report.extras import COMPANIONS

    for name in EXTRA_RESULTS + tuple(c for names in COMPANIONS.values() for c in names):
        for suffix, reader in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
            file = path / f"{name}{suffix}"
            if file.is_file() and name not in data.extras:
                table = read_table(data, file.name, reader)
                if table is not None:
                    data.extras[name] = table
        file = path / f"{name}.json"
        if file.is_file():
            try:
                data.extra_json[name] = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                notices.append(f"{file.name} could not be read ({error}).")
    if "contrast" in data.extras or "contrast" in data.extra_json:  # the table, or its JSON alone
        said = notices if "contrast" in data.extras else []  # without the table, nothing to call unchecked
        if not own_model("contrast.parquet", data.extra_json.get("contrast"), info, said):
            data.extras.pop("contrast", None)  # a contrast of another network, written into this folder
            data.extra_json.pop("contrast", None)
    from augsense.report.paper_figures import PAPER_FILES
    from augsense.report.trust import foreign_tables_warning

    for name in PAPER_FILES:  # read (and checked) now, so that the banner lists every table left out
        data.analysis_table(name)
    warning = foreign_tables_warning(data.foreign, data.result_set)
    if warning:  # the banner shows run.json's warnings first: this copy of them gets it
        info["warnings"] = [*(info.get("warnings") or []), warning]
    return data
