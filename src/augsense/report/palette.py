"""One colour per player (factor), fixed by the player's *name*, used by every figure.

Built-in factors have colours of their own (``BUILTIN_COLOURS``), so "hue" is the same purple in
every run whatever the factor order; ``image`` is black and ``order`` grey. A user factor gets a
colour from ``EXTRA_COLOURS`` chosen by a hash of its name (stable across runs and processes); when
two user factors of one run hash to the same colour, the later name in alphabetical order takes the
next free one, so the mapping never depends on the run's order either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

#: The built-in augmentations (and their reference variants, lighter shades of the same family).
BUILTIN_COLOURS = {
    "erasing": "#d62728", "sharpness": "#bcbd22", "rolling": "#2ca02c", "grayscale": "#17becf",
    "gaussian_blur": "#1f77b4", "brightness": "#ff7f0e", "contrast": "#8c564b", "saturation": "#e377c2",
    "hue": "#9467bd", "hflip": "#393b79", "rotation": "#a55194", "elliptic_local_blur": "#6baed6",
    "erasing_reference": "#ff9896", "rolling_reference": "#98df8a", "rotation_reference": "#ce6dbd",
}
#: Colours for user-registered factors, distinct from the built-ins and from black/grey.
EXTRA_COLOURS = (
    "#637939", "#8c6d31", "#843c39", "#5254a3", "#8ca252", "#bd9e39", "#ad494a", "#6b6ecf", "#e7ba52",
    "#7b4173", "#3182bd", "#31a354", "#e6550d", "#756bb1", "#636363", "#fdae6b", "#9e9ac8", "#a1d99b",
)
#: Fixed colours for the players that are not augmentations.
SPECIAL_COLOURS = {"image": "#222222", "order": "#9e9e9e"}
#: The part of the variance no single factor explains (interactions), in stacked bars.
REMAINDER_COLOUR = "#d9d9d9"


def _hashed_slot(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "big") % len(EXTRA_COLOURS)


def factor_colour(name: str) -> str:
    """The colour of one player on its own (a user factor: its hashed slot, collisions not resolved)."""
    return SPECIAL_COLOURS.get(name) or BUILTIN_COLOURS.get(name) or EXTRA_COLOURS[_hashed_slot(name)]


def factor_colours(players: Sequence[str]) -> dict[str, str]:
    """Map each player to its colour by name; the result does not depend on the order of ``players``."""
    colours = {p: SPECIAL_COLOURS.get(p) or BUILTIN_COLOURS[p] for p in players
               if p in SPECIAL_COLOURS or p in BUILTIN_COLOURS}
    taken = set()
    for name in sorted(set(players) - set(colours)):
        slot = _hashed_slot(name)
        for step in range(len(EXTRA_COLOURS)):
            if (slot + step) % len(EXTRA_COLOURS) not in taken:
                slot = (slot + step) % len(EXTRA_COLOURS)
                break
        taken.add(slot)
        colours[name] = EXTRA_COLOURS[slot]
    return {p: colours[p] for p in players}
