"""Stimulus designs: the augmented images of a pick-freeze design, exported for recordings outside augsense.

A :class:`StimulusDesign` is a design (:mod:`augsense.design`), a factor space and a set of images. Its
stimuli are the design's evaluations in *design order*: stimulus id ``s = base_row * G + member``
(G = the design's group size), so block k of the design holds ids ``k*block_size*G ...``. Exporting
writes one PNG per presented trial, numbered in presentation order (optionally shuffled with a
seed, optionally with each stimulus repeated to measure trial noise), a table with one row per
trial (``design.csv`` and ``design.parquet``) and ``design.json``, the metadata from which
:func:`load_stimulus_design` rebuilds the exact design, so recorded responses can be fed to the
same estimators (:mod:`augsense.analyses.responses`) without storing the design points.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from augsense.analyses.plan import RunPlan
from augsense.config import SensitivityConfig
from augsense.design import Design, layouts
from augsense.errors import AugsenseError
from augsense.factors import FactorSpace
from augsense.io.images import ImageSet, images_for

FORMAT = "augsense-stimuli/1"
METADATA = "design.json"
TABLE = "design"  # design.csv and design.parquet
STIMULUS_FOLDER = "stimuli"


@dataclass(frozen=True)
class Presentation:
    """What :func:`augsense.io.images.images_for` reads of a model bundle, for stimuli shown without one:
    the side ``input_size`` of the centre crop after the shorter side is resized to ``resize_size``
    (bilinear); no class names (labels, if any, come from the folders or label files)."""

    input_size: int
    resize_size: int
    class_names: None = None
    interpolation: str = "bilinear"


@dataclass
class StimulusDesign:
    """The stimuli of a pick-freeze design and the order in which they are presented.

    Attributes:
        space: the factors (players) the design's coordinates are mapped through.
        design: the block-addressable pick-freeze design (kind, dims, n, seed, block_size).
        image_sources: where each base image came from (n_images entries).
        size: side S of the (3, S, S) stimuli in pixels.
        repeats: presentations of every stimulus (> 1 measures trial-to-trial noise).
        shuffle_seed: seed of the shuffled presentation order; None keeps design order (repeat by
            repeat).
        config: the run configuration the design came from (provenance), when there was one.
        images: the decoded base images (None when the design was read back from ``design.json``;
            they are needed to render stimuli, not to analyse responses).
        plan: the run plan (:class:`augsense.analyses.plan.RunPlan` as a dict: factors, bounds, design,
            image content hash …; model entries null) when built from a config; in ``design.json``.
    """

    space: FactorSpace
    design: Design
    image_sources: list[str]
    size: int
    repeats: int = 1
    shuffle_seed: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    images: ImageSet | None = None
    plan: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise AugsenseError(f"repeats must be an integer >= 1 (presentations per stimulus), got {self.repeats!r}")
        if self.shuffle_seed is not None and (not isinstance(self.shuffle_seed, int) or self.shuffle_seed < 0):
            raise AugsenseError(f"the shuffle seed must be a non-negative integer, got {self.shuffle_seed!r}")
        if tuple(self.design.dims) != tuple(self.space.dims):
            raise AugsenseError(f"the design has players with {list(self.design.dims)} coordinates, the factors "
                                f"{self.space.players} need {list(self.space.dims)}; build both from one config")
        if not self.image_sources:
            raise AugsenseError("a stimulus design needs at least one base image")
        if self.images is not None and len(self.images) != len(self.image_sources):
            raise AugsenseError("images and image_sources must have the same length")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: SensitivityConfig, *, images: ImageSet | None = None, size: int = 224,
                    resize: int | None = None, repeats: int = 1, shuffle_seed: int | None = None) -> "StimulusDesign":
        """The design a sensitivity run with ``config`` would evaluate, on images of side ``size``.

        ``images`` overrides ``config.images`` (a folder or ``"bundled"``), read at ``size`` after
        resizing the shorter side to ``resize`` (default: 256/224 of ``size``, as the embedded model).
        The block size follows ``config.batch_size`` exactly as :func:`run_sensitivity` does, so the
        rows (and, for permutation designs, the player orders) are the same as an in-process run's.
        """
        from augsense.analyses.sensitivity import build_factor_space, design_for

        if not isinstance(size, int) or size < 8:
            raise AugsenseError(f"stimulus size must be an integer >= 8 pixels, got {size!r}")
        space = build_factor_space(config)
        design = design_for(config, space)
        if images is None:  # the run's subset, through the one config → ImageSet path, at the stimulus geometry
            images = images_for(config, Presentation(size, resize or int(round(size * 256 / 224))))
        elif images.size != size:
            raise AugsenseError(f"the images are {images.size} px, the stimuli should be {size} px; pass size="
                                f"{images.size} or images at {size} px")
        plan = RunPlan.build(config, space=space, design=design, images=images).to_dict()
        return cls(space, design, list(images.sources), size, repeats, shuffle_seed, config.to_dict(), images, plan)

    # -- the stimuli ---------------------------------------------------------------------------
    @property
    def group_size(self) -> int:
        return self.design.group_size

    @property
    def n_stimuli(self) -> int:
        """Distinct stimuli: base rows × group size."""
        return self.design.n_evaluations

    @property
    def n_trials(self) -> int:
        return self.n_stimuli * self.repeats

    @property
    def players(self) -> list[str]:
        return list(self.space.players)

    def points(self) -> np.ndarray:
        """Unit-cube rows of every stimulus in design order: (n_stimuli, D) float64."""
        return np.concatenate([b.points.reshape(-1, self.design.n_coordinates) for b in self.design.blocks()])

    def image_index(self, points: np.ndarray | None = None) -> np.ndarray:
        """The base image of every stimulus (n_stimuli,) int64, chosen as :func:`run_sensitivity` does."""
        n_images = len(self.image_sources)
        if self.space.image_mode == "joint":
            u = torch.from_numpy(self.points() if points is None else points).float()
            strata = self.images.strata() if self.space.image_factors and self.images is not None else n_images
            return self.space.image_index(u, strata).numpy()
        return np.repeat(self.design.image_of(np.arange(self.design.n), n_images), self.group_size)

    def stimulus_table(self) -> pd.DataFrame:
        """One row per stimulus in design order.

        Columns: stimulus, block, base_row, member, role (A, B, AB_i, BA_i, H_g, Z_k), from_b (players
        taken from the B matrix, joined by '+'), image, source, every factor's parameters
        ``<factor>.<parameter>`` in its own units, ``<factor>.active`` and the composition ``order``.
        """
        G, players = self.group_size, self.players
        blocks, masks = [], []
        for block in self.design.blocks():
            r = block.points.shape[0]
            blocks.append(np.full(r * G, block.index))
            if block.permutations is not None:
                masks.append(layouts.permutation_walk_mask(block.permutations).reshape(r * G, -1))
            else:
                masks.append(np.tile(layouts.fixed_mask(self.design.kind, len(players)), (r, 1)))
        points = self.points()
        image = self.image_index(points)
        from_b = np.concatenate(masks)
        table = pd.DataFrame({
            "stimulus": np.arange(self.n_stimuli),
            "block": np.concatenate(blocks),
            "base_row": np.repeat(np.arange(self.design.n), G),
            "member": np.tile(np.arange(G), self.design.n),
            "role": np.tile(np.asarray(self.design.roles, dtype=object), self.design.n),
            "from_b": ["+".join(p for p, taken in zip(players, row) if taken) for row in from_b],
            "image": image,
            "source": np.asarray(self.image_sources, dtype=object)[image],
        })
        parameters = self.space.parameter_table(torch.from_numpy(points).float())
        return pd.concat([table, parameters], axis=1)

    def presentation(self) -> pd.DataFrame:
        """The trials in presentation order: columns trial, stimulus, repeat.

        Without a shuffle seed: all stimuli in design order, once per repeat; with one: a seeded random
        permutation of all trials (``numpy.random.default_rng(shuffle_seed)``).
        """
        stimulus = np.tile(np.arange(self.n_stimuli), self.repeats)
        repeat = np.repeat(np.arange(self.repeats), self.n_stimuli)
        if self.shuffle_seed is not None:
            order = np.random.default_rng(self.shuffle_seed).permutation(self.n_trials)
            stimulus, repeat = stimulus[order], repeat[order]
        return pd.DataFrame({"trial": np.arange(self.n_trials), "stimulus": stimulus, "repeat": repeat})

    def trial_table(self) -> pd.DataFrame:
        """One row per presented trial: trial, file, stimulus, repeat and the stimulus's columns."""
        trials = self.presentation()
        trials.insert(1, "file", [trial_file(t, self.n_trials) for t in trials["trial"]])
        table = self.stimulus_table()
        return trials.join(table.drop(columns="stimulus"), on="stimulus")

    def render(self, stimuli: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """The augmented images of the given stimulus ids: (k, 3, S, S) float32 in [0, 1].

        Uses float32 design rows, as the sensitivity run does, so an in-process run sees the same images.
        """
        if self.images is None:
            raise AugsenseError("this design was read from design.json without its images; rebuild it with "
                                "StimulusDesign.from_config(...) to render stimuli")
        ids = np.asarray(stimuli, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_stimuli):
            raise AugsenseError(f"stimulus ids must lie in 0..{self.n_stimuli - 1}")
        u = torch.from_numpy(self._rows[ids]).to(device=device, dtype=torch.float32)
        index = torch.from_numpy(self._images_of_rows[ids])
        return self.space.apply(self.images.batch(index, device), u).clamp_(0.0, 1.0)

    @cached_property
    def _rows(self) -> np.ndarray:
        return self.points()

    @cached_property
    def _images_of_rows(self) -> np.ndarray:
        return self.image_index(self._rows)

    # -- export --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The metadata that rebuilds the design and the presentation order (JSON-serialisable)."""
        return {"format": FORMAT, "design": {**self.design.to_dict(), "fingerprint": self.design.fingerprint(),
                                             "group_size": self.group_size, "roles": self.design.roles},
                "players": self.players, "factors": self.space.to_dict(),
                "images": {"count": len(self.image_sources), "sources": list(self.image_sources), "size": self.size},
                "repeats": self.repeats, "shuffle_seed": self.shuffle_seed, "n_stimuli": self.n_stimuli,
                "n_trials": self.n_trials, "config": self.config, "plan": self.plan}

    @classmethod
    def from_dict(cls, data: dict[str, Any], images: ImageSet | None = None) -> "StimulusDesign":
        """Rebuild from :meth:`to_dict`; checks that the rebuilt design has the recorded fingerprint."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise AugsenseError(f"not an augsense stimulus design (format {data.get('format') if isinstance(data, dict) else None!r}, "
                                f"expected {FORMAT!r}); export one with `augsense stimuli CONFIG --out DIR`")
        try:
            design = Design.from_dict(data["design"])
            space = FactorSpace.from_dict(data["factors"])
            fingerprint = data["design"].get("fingerprint")
            made = cls(space, design, list(data["images"]["sources"]), int(data["images"]["size"]),
                       int(data["repeats"]), data.get("shuffle_seed"), dict(data.get("config") or {}), images,
                       data.get("plan"))
        except (KeyError, TypeError, ValueError) as error:
            raise AugsenseError(f"the stimulus design metadata is incomplete or damaged ({error!r})") from None
        if made.plan is not None and (not isinstance(made.plan, dict)
                                      or made.plan.get("fingerprint") != RunPlan.from_dict(made.plan).fingerprint):
            raise AugsenseError("the run plan in design.json does not match its fingerprint; the file was edited")
        if fingerprint is not None and fingerprint != design.fingerprint():
            raise AugsenseError("the design rebuilt from design.json does not match its fingerprint; the file was edited "
                                "or written by another augsense version")
        return made

    def export(self, out: str | Path, *, batch_size: int = 64, compress_level: int = 1) -> Path:
        """Write the stimuli as PNGs (``stimuli/<trial>.png``), ``design.csv``, ``design.parquet``, ``design.json``.

        One PNG per trial, numbered in presentation order (a repeated stimulus is written once per
        presentation). Returns the path of ``design.parquet``.
        """
        if batch_size < 1:
            raise AugsenseError(f"batch_size must be >= 1, got {batch_size}")
        from augsense.io.lock import ADVICE, holding, prepare_out_dir

        out = prepare_out_dir(out)
        with holding(out, advice=ADVICE):  # one export at a time: a second is refused, naming the holder
            return self._export(out, batch_size, compress_level)

    def _export(self, out: Path, batch_size: int, compress_level: int) -> Path:
        """:meth:`export` under the folder's lock. The design tables of an earlier export are removed first and
        the new ones written last, each atomically, design.json last: an export killed midway leaves no table
        that describes images it did not write. PNGs of an earlier, longer export are removed."""
        from augsense.io.provenance import atomic_write, write_parquet

        for name in (METADATA, f"{TABLE}.parquet", f"{TABLE}.csv"):
            (out / name).unlink(missing_ok=True)
        folder = out / STIMULUS_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        trials = self.trial_table()
        files_of: dict[int, list[str]] = {}
        for stimulus, name in zip(trials["stimulus"].to_numpy(), trials["file"]):
            files_of.setdefault(int(stimulus), []).append(name)
        with torch.inference_mode():
            for start in range(0, self.n_stimuli, batch_size):
                ids = np.arange(start, min(start + batch_size, self.n_stimuli))
                pixels = to_uint8(self.render(ids)).permute(0, 2, 3, 1).numpy()
                for stimulus, image in zip(ids.tolist(), pixels):
                    picture = Image.fromarray(image)
                    for name in files_of[stimulus]:
                        picture.save(out / name, compress_level=compress_level)
        written = {Path(name).name for name in trials["file"]}
        for stale in folder.glob("*.png"):
            if stale.name not in written:
                stale.unlink(missing_ok=True)
        atomic_write(out / f"{TABLE}.csv", lambda tmp: trials.to_csv(tmp, index=False))
        write_parquet(trials, out / f"{TABLE}.parquet")
        text = json.dumps(self.to_dict(), indent=2, default=str)
        atomic_write(out / METADATA, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return out / f"{TABLE}.parquet"


def trial_file(trial: int, n_trials: int) -> str:
    """The PNG of a trial, relative to the export folder: ``stimuli/000042.png`` (zero-padded)."""
    width = max(6, len(str(n_trials - 1)))
    return f"{STIMULUS_FOLDER}/{int(trial):0{width}d}.png"


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(k, 3, S, S) float in [0, 1] → uint8 on the CPU, rounded to the nearest level."""
    return (images.detach().float().clamp(0, 1) * 255.0).round_().to(torch.uint8).cpu()


def read_stimulus(path: str | Path) -> torch.Tensor:
    """An exported PNG as (3, S, S) float32 in [0, 1]."""
    with Image.open(path) as picture:
        array = np.asarray(picture.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def load_stimulus_design(path: str | Path) -> tuple[StimulusDesign, pd.DataFrame]:
    """An exported design and its trial table from the export folder, ``design.json`` or the table.

    ``path`` may be the folder, ``design.json``, ``design.csv`` or ``design.parquet``; the metadata is
    read from ``design.json`` next to it. The table is checked against the rebuilt design.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta = folder / METADATA
    if not path.exists():
        raise AugsenseError(f"design table {str(path)!r} does not exist; pass the folder written by `augsense stimuli`")
    if not meta.is_file():
        raise AugsenseError(f"no {METADATA} next to {str(path)!r}: the design table must stay in the folder written "
                            "by `augsense stimuli`, with its design.json")
    try:
        data = json.loads(meta.read_text())
    except json.JSONDecodeError as error:
        raise AugsenseError(f"{str(meta)!r} is damaged: {error}") from None
    design = StimulusDesign.from_dict(data)
    table_path = path if path.is_file() and path.suffix in (".csv", ".parquet") else folder / f"{TABLE}.parquet"
    if not table_path.is_file():
        table_path = folder / f"{TABLE}.csv"
    try:
        table = pd.read_parquet(table_path) if table_path.suffix == ".parquet" else pd.read_csv(table_path)
    except (OSError, ValueError) as error:
        raise AugsenseError(f"cannot read the design table {str(table_path)!r}: {error}") from None
    expected = design.presentation()
    if (len(table) != len(expected) or not {"trial", "stimulus"} <= set(table.columns)
            or not np.array_equal(table["trial"].to_numpy(), expected["trial"].to_numpy())
            or not np.array_equal(table["stimulus"].to_numpy(), expected["stimulus"].to_numpy())):
        raise AugsenseError(f"the design table {str(table_path)!r} does not match {METADATA} (trials or their order "
                            "differ); use the table and metadata written together by `augsense stimuli`")
    return design, table
