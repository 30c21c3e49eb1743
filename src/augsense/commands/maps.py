"""``augsense maps RUN_DIR``: statistics of a run's sensitivity maps, per layer.

For every layer and index (first order, total order, Shapley: whichever the run has):

* Spearman correlations between factors' maps across the layer's units, pixel-wise for per-unit
  maps (per channel across positions, averaged), and each map against the units' coefficient of
  variation (:func:`augsense.analyses.map_statistics.map_correlations`);
* linear discriminant analysis predicting a unit's factor from its map, with repeated stratified
  k-fold accuracy, chance, confusion matrix and 2-D projection
  (:func:`augsense.analyses.map_statistics.factor_discrimination`).

**Labels for LDA come from a replicate run** (``--replicate RUN_DIR2``): the same model, layers
and factors estimated again with another design seed (``augsense run … --seed 1``) or on other
images. A unit's label is the dominant factor of its *replicate* map; the features are its map in
RUN_DIR. Labels from the map itself would be circular (LDA would learn the argmax and beat chance
on pure noise); first-order maps labelling total-order maps of the same run is circular too, since
both come from the same model evaluations and share their estimation error. Accuracy above chance
therefore means that a unit's factor preference is reproducible and linearly readable from its
map. Without a replicate only the correlations are computed.

The paper's definitions are computed beside these (``--no-paper`` to skip): per-pixel Spearman
correlation between factors across channels, mean and SD over pixels
(:func:`~augsense.analyses.map_statistics.pixel_correlations`), and LDA whose samples are
(factor, channel) maps labelled by their factor, 5 × 100 repeated stratified folds
(:func:`~augsense.analyses.map_statistics.paper_discrimination`; no replicate needed).

Writes into the run folder: ``map_statistics.parquet`` (layer, quantity, scope, factor_a,
factor_b, rho, p_value, n), and with a replicate ``map_lda.parquet`` (one row per layer and
quantity: accuracy, accuracy_sd, chance, …), ``map_lda_confusion.parquet`` (layer, quantity, true,
predicted, fraction) and ``map_lda_projection.parquet`` (layer, quantity, ld1, ld2, factor); the paper's
``map_pixel_correlations.parquet`` (layer, quantity, factor_a, factor_b, rho_mean, rho_sd, n_pixels,
n_undefined, n_channels, n_dead_channels, missing), ``map_lda_paper.parquet`` (layer, quantity, accuracy,
accuracy_sd, train_accuracy, chance, n_samples, n_features, …) and ``map_lda_paper_confusion.parquet`` (layer, quantity, true, predicted, fraction).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from augsense.analyses.map_statistics import (factor_discrimination, map_correlations, paper_discrimination,
                                              pixel_correlations)
from augsense.errors import AugsenseError
from augsense.io.lock import holding
from augsense.io.provenance import Source, commit_tables, write_parquet
from augsense.io.results import RunFolder, load_run

__all__ = ["MapStatisticsTables", "MAP_INDEX_QUANTITIES", "map_statistics_of_run", "register"]

#: Index maps whose statistics are computed, in this order, when the run has them.
MAP_INDEX_QUANTITIES = ("first_order", "total_order", "shapley")


@dataclass
class MapStatisticsTables:
    """The tables ``augsense maps`` writes; LDA tables are empty without a replicate."""

    correlations: pd.DataFrame
    lda: pd.DataFrame
    confusion: pd.DataFrame
    projection: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    pixel: pd.DataFrame = field(default_factory=pd.DataFrame)
    paper_lda: pd.DataFrame = field(default_factory=pd.DataFrame)
    paper_confusion: pd.DataFrame = field(default_factory=pd.DataFrame)
    source: Source | None = None  # the run folder and result set the maps were read from

    def groups(self) -> list[list[tuple[str, pd.DataFrame]]]:
        """The tables by what computes them together: correlations, replicate LDA, the paper's statistics."""
        return [[("map_statistics", self.correlations)],
                [("map_lda", self.lda), ("map_lda_confusion", self.confusion), ("map_lda_projection", self.projection)],
                [("map_pixel_correlations", self.pixel), ("map_lda_paper", self.paper_lda),
                 ("map_lda_paper_confusion", self.paper_confusion)]]

    def write(self, out: Path) -> list[str]:
        """Write the non-empty tables as Parquet into ``out``; returns the file names written.

        Into the run folder the maps came from, the tables are one commit stamped with its result set
        (refused if another set was committed meanwhile), and an earlier commit's table of a group this
        one computes but leaves empty is removed; elsewhere (``out`` another folder), plain atomic writes.
        """
        groups = [[(name, table) for name, table in group if len(table)] for group in self.groups()]
        tables = [pair for group in groups for pair in group]
        if self.source is not None and Path(out).resolve() == self.source.folder.resolve():
            replaced = [name for group, kept in zip(self.groups(), groups) if kept for name, _ in group]
            commit_tables(self.source, tables, replaces=replaced)
        else:
            with holding(out):
                for name, table in tables:
                    write_parquet(table, Path(out) / f"{name}.parquet")
        return [f"{name}.parquet" for name, _ in tables]


def _check_replicate(run: RunFolder, replicate: RunFolder) -> None:
    if replicate.players != run.players:
        raise AugsenseError(f"the replicate's factors {replicate.players} differ from the run's {run.players}; "
                            "redo the replicate with the same factors (and another --seed)")
    for layer in run.layer_names:
        if layer not in replicate.info.get("layers", {}):
            raise AugsenseError(f"the replicate has no layer {layer!r}; redo it with the same --layers")
        if replicate.info["layers"][layer].get("unit_shape") != run.info["layers"][layer].get("unit_shape"):
            raise AugsenseError(f"layer {layer!r} has another unit shape in the replicate (different --reduction?)")


def map_statistics_of_run(run_dir: str | Path, *, replicate_dir: str | Path | None = None,
                          quantities: Sequence[str] | None = None, layers: Sequence[str] | None = None,
                          n_splits: int = 5, n_repeats: int = 10, seed: int = 0, paper: bool = True,
                          paper_repeats: int = 100, paper_missing: str = "paper") -> MapStatisticsTables:
    """Correlations (and, with a replicate run, LDA) of a run folder's maps, layer by layer.

    Args:
        run_dir: a run folder (``augsense run``/``demo``).
        replicate_dir: an independent re-estimate (same model, layers and factors; another seed or
            other images) whose dominant factors label the units for LDA.
        quantities: index maps to analyse (default: those of :data:`MAP_INDEX_QUANTITIES` present).
        layers: layers to analyse (default: all of the run).
        n_splits, n_repeats, seed: repeated stratified k-fold of the LDA.
        paper: also the paper's per-pixel correlations and (factor, channel)-map LDA.
        paper_repeats: repeats of the paper LDA's n_splits-fold (the paper: 100).
        paper_missing: dead units (NaN) in the paper statistics: ``"paper"`` index 0 and an undefined
            per-pixel ρ 0, as the reference code; ``"omit"`` left out (see ``map_statistics.MISSING``).

    Returns:
        :class:`MapStatisticsTables`; ``notes`` says what was skipped and why.
    """
    if n_splits < 2 or n_repeats < 1:
        raise AugsenseError(f"LDA needs --folds ≥ 2 and --repeats ≥ 1, got {n_splits} and {n_repeats}")
    run = load_run(run_dir)
    replicate = load_run(replicate_dir) if replicate_dir is not None else None
    if replicate is not None:
        if Path(replicate_dir).resolve() == Path(run_dir).resolve():  # type: ignore[arg-type]
            raise AugsenseError("the replicate is the run itself; LDA labels must come from an independent run "
                                "(e.g. `augsense run … --seed 1 --out RUN2`)")
        _check_replicate(run, replicate)
    players = run.players
    chosen_layers = list(layers) if layers is not None else run.layer_names
    unknown = [layer for layer in chosen_layers if layer not in run.layer_names]
    if unknown:
        raise AugsenseError(f"run has no layer {unknown[0]!r}; its layers: {', '.join(run.layer_names)}")
    available = [q for q in MAP_INDEX_QUANTITIES if any(f"{layer}/{q}" in run.maps for layer in chosen_layers)]
    chosen = list(quantities) if quantities is not None else available
    bad = [q for q in chosen if q not in available]
    if bad or not chosen:
        raise AugsenseError(f"run has no {bad[0] if bad else 'index'!r} maps; it has: {', '.join(available) or 'none'}"
                            + ("" if run.maps else " (maps.npz missing or damaged)"))
    if paper and paper_repeats < 1:
        raise AugsenseError(f"the paper LDA needs paper_repeats ≥ 1, got {paper_repeats}")
    correlations, lda, confusion, projection, notes = [], [], [], [], []
    pixel, paper_lda, paper_confusion = [], [], []
    for layer in chosen_layers:
        cv = run.maps.get(f"{layer}/cv")
        for quantity in chosen:
            maps = run.map(layer, quantity)
            labels = {"layer": layer, "quantity": quantity}
            try:
                table = map_correlations(maps, players, cv=cv).to_dataframe()
                correlations.append(table.assign(**labels))
            except AugsenseError as error:
                notes.append(f"{layer} {quantity}: no correlations ({error})")
            if paper:
                _paper_statistics(maps, players, labels, n_splits, paper_repeats, seed, pixel, paper_lda,
                                  paper_confusion, notes, paper_missing)
            if replicate is None:
                continue
            replicate_maps = replicate.map(layer, quantity)
            if np.array_equal(replicate_maps, maps, equal_nan=True):
                raise AugsenseError(f"the replicate's {quantity} map of {layer!r} is identical to the run's: it is not "
                                    "an independent estimate; redo it with another --seed or other images")
            try:
                result = factor_discrimination(maps, players, label_maps=replicate_maps, n_splits=n_splits,
                                               n_repeats=n_repeats, seed=seed)
            except AugsenseError as error:
                notes.append(f"{layer} {quantity}: no LDA ({error})")
                continue
            lda.append(result.to_dataframe().assign(**labels, label_source=str(replicate.path)))
            matrix = result.confusion_dataframe().stack().rename("fraction").reset_index()
            confusion.append(matrix.assign(**labels))
            projection.append(result.projection_dataframe().assign(**labels))
    if replicate is None:
        notes.append("no LDA: give --replicate RUN_DIR2 (same run with another --seed) to label units independently")

    def frame(parts: list[pd.DataFrame]) -> pd.DataFrame:
        if not parts:
            return pd.DataFrame()
        table = pd.concat(parts, ignore_index=True)
        return table[["layer", "quantity", *[c for c in table.columns if c not in ("layer", "quantity")]]]

    return MapStatisticsTables(frame(correlations), frame(lda), frame(confusion), frame(projection), notes,
                               frame(pixel), frame(paper_lda), frame(paper_confusion), Source.of(run.path, run.info))


def _paper_statistics(maps: np.ndarray, players: list[str], labels: dict[str, str], n_splits: int, repeats: int,
                      seed: int, pixel: list[pd.DataFrame], lda: list[pd.DataFrame], confusion: list[pd.DataFrame],
                      notes: list[str], missing: str = "paper") -> None:
    """Append one layer × index's paper tables (per-pixel correlations, (factor, channel)-map LDA)."""
    where = f"{labels['layer']} {labels['quantity']}"
    try:
        pixel.append(pixel_correlations(maps, players, missing=missing).to_dataframe().assign(**labels))
    except AugsenseError as error:
        notes.append(f"{where}: no per-pixel correlations ({error})")
    try:
        result = paper_discrimination(maps, players, n_splits=n_splits, n_repeats=repeats, seed=seed,
                                      missing=missing)
    except AugsenseError as error:
        notes.append(f"{where}: no paper LDA ({error})")
        return
    lda.append(result.to_dataframe().assign(**labels))
    confusion.append(result.confusion_dataframe().stack().rename("fraction").reset_index().assign(**labels))


def register(subparsers: Any) -> None:
    """Add the ``maps`` sub-command."""
    parser = subparsers.add_parser(
        "maps", help="statistics of a run's maps: factor correlations, CV correlation, LDA (with --replicate)",
        description="Per layer: Spearman correlations between factors' maps (across units, pixel-wise for per-unit "
                    "maps), with the coefficient of variation, and — given an independent replicate run to label "
                    "the units — LDA predicting a unit's factor from its map. Writes Parquet tables into RUN_DIR.")
    parser.add_argument("run_dir", help="run folder of `augsense run` or `augsense demo`")
    parser.add_argument("--replicate", default=None, metavar="RUN_DIR2",
                        help="the same run redone with another --seed (or other images): labels for LDA")
    parser.add_argument("--quantities", default=None, metavar="A,B",
                        help=f"index maps to analyse (default: those present of {', '.join(MAP_INDEX_QUANTITIES)})")
    parser.add_argument("--layers", default=None, metavar="A,B", help="layers to analyse (default: all)")
    parser.add_argument("--folds", type=int, default=5, help="k of the repeated stratified k-fold (default 5)")
    parser.add_argument("--repeats", type=int, default=10, help="repeats of the k-fold (default 10)")
    parser.add_argument("--paper", action=argparse.BooleanOptionalAction, default=True,
                        help="also the paper's per-pixel correlations and (factor, channel)-map LDA (default on)")
    parser.add_argument("--paper-repeats", type=int, default=100,
                        help="repeats of the paper LDA's k-fold (default 100, as the paper)")
    parser.add_argument("--paper-missing", choices=("paper", "omit"), default="paper",
                        help="dead units (no variance, NaN) in the paper's statistics: paper (default) counts their "
                             "index and an undefined per-pixel ρ as 0, as the reference code; omit leaves them out")
    parser.set_defaults(func=cmd_maps)


def _names(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text is not None else None


def cmd_maps(args: argparse.Namespace) -> int:
    if not Path(args.run_dir).is_dir():
        load_run(args.run_dir)  # says what is wrong with the folder before it is locked
    with holding(args.run_dir):  # one writer at a time: a second is refused at once, naming the holder
        tables = map_statistics_of_run(args.run_dir, replicate_dir=args.replicate, quantities=_names(args.quantities),
                                       layers=_names(args.layers), n_splits=args.folds, n_repeats=args.repeats,
                                       paper=args.paper, paper_repeats=args.paper_repeats,
                                       paper_missing=args.paper_missing)
        written = tables.write(Path(args.run_dir))
    units = tables.correlations[tables.correlations["scope"] == "units"] if len(tables.correlations) else None
    if units is not None and len(units):
        print("Spearman ρ between factors' maps across units (mean |ρ| per layer and index):")
        summary = units.assign(abs_rho=units["rho"].abs()).groupby(["layer", "quantity"], sort=False)["abs_rho"].mean()
        for (layer, quantity), value in summary.items():
            print(f"  {layer:<20} {quantity:<12} {value:.2f}")
    if len(tables.lda):
        print("LDA: factor predicted from a unit's map (labels from the replicate), accuracy ± sd vs chance:")
        for row in tables.lda.itertuples():
            print(f"  {row.layer:<20} {row.quantity:<12} {row.accuracy:.2f} ± {row.accuracy_sd:.2f} vs {row.chance:.2f}"
                  f"  ({row.n_samples} units)")
    if len(tables.paper_lda):
        print(f"paper LDA: factor of a (factor, channel) map, {args.folds} × {args.paper_repeats} folds, accuracy vs chance:")
        for row in tables.paper_lda.itertuples():
            print(f"  {row.layer:<20} {row.quantity:<12} {row.accuracy:.2f} ± {row.accuracy_sd:.2f} vs {row.chance:.2f}"
                  f"  ({row.n_samples} maps × {row.n_features} pixels)")
    for note in tables.notes:
        print(f"note: {note}")
    print(f"results: {args.run_dir}/" + ", ".join(written) if written else "nothing written")
    return 0
