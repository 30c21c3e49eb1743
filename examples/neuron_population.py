"""A simulated neuron population taken through export → recording → analysis (docs/biology.md).

Four hand-written "neurons" respond to the exported PNGs (nothing else of augsense is used to compute
them); trial noise is added; the responses are analysed with one repeat and with four.
Run: python examples/neuron_population.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from augsense.analyses.responses import analyse_responses
from augsense.analyses.stimuli import StimulusDesign, read_stimulus
from augsense.config import SensitivityConfig

LUMA = torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)


def neurons(images: torch.Tensor) -> np.ndarray:
    """(k, 3, S, S) in [0, 1] → (k, 4) firing rates (spikes/s) of four planted cells."""
    grey = (images * LUMA).sum(1)                                     # (k, S, S)
    half = grey.shape[-1] // 2
    luminance = grey.mean((1, 2))
    colour = (images - grey[:, None]).abs().mean((1, 2, 3))           # distance from grey: saturation
    left_right = (grey[..., :half].mean((1, 2)) - grey[..., half:].mean((1, 2))) / luminance.clamp_min(1e-3)
    rates = torch.stack([20 + 40 * luminance,                         # luminance cell
                         10 + 120 * colour,                           # colour cell
                         15 + 60 * left_right,                        # left-right cell (hflip)
                         15 + 40 * luminance + 60 * left_right], 1)   # mixed cell
    return rates.numpy()


def main(out: Path) -> None:
    config = SensitivityConfig(images="bundled", limit_images=8, factors=["brightness", "saturation", "hflip"],
                               bounds={"brightness": {"factor": [0.3, 1.5]}}, n=128, seed=0)
    design = StimulusDesign.from_config(config, size=64, repeats=4, shuffle_seed=1)
    design.export(out / "export")
    table = pd.read_csv(out / "export" / "design.csv")
    images = torch.stack([read_stimulus(out / "export" / f) for f in table["file"]])
    clean = neurons(images)
    names = ["luminance", "colour", "left_right", "mixed"]
    rng = np.random.default_rng(0)
    rows = []
    for label, noise, repeats in (("noise-free", 0.0, 1), ("σ = 5, 1 repeat", 5.0, 1), ("σ = 5, 4 repeats", 5.0, 4)):
        recorded = pd.DataFrame(clean + noise * rng.standard_normal(clean.shape), columns=names)
        recorded.insert(0, "stimulus", table["stimulus"])
        recorded = recorded[table["repeat"] < repeats]
        result = analyse_responses(out / "export", recorded, out_dir=out / label.replace(" ", "_")).result
        for j, neuron in enumerate(names):
            for i, factor in enumerate(design.players):
                low, high = result.total_order_ci[:, j, i]
                rows.append({"recording": label, "neuron": neuron, "factor": factor,
                             "ST": f"{result.total_order[j, i]:.3f} [{low:.3f}, {high:.3f}]"})
    summary = pd.DataFrame(rows).pivot(index=["neuron", "factor"], columns="recording", values="ST")
    columns = ["noise-free", "σ = 5, 1 repeat", "σ = 5, 4 repeats"]
    print("| neuron | factor | " + " | ".join(columns) + " |\n|---|---|" + "---|" * len(columns))
    for (neuron, factor), row in summary[columns].iterrows():
        print(f"| {neuron} | {factor} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/neurons"))
