"""One colour per player (factor), fixed by the run's player order, used by every figure."""

from __future__ import annotations

from collections.abc import Sequence

# Qualitative colours that stay distinct side by side (tab10, then darker/lighter companions).
FACTOR_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#393b79", "#e7ba52", "#637939", "#ad494a", "#a55194", "#6b6ecf", "#843c39", "#7b4173", "#3182bd", "#31a354",
)
#: Fixed colours for the players that are not augmentations.
SPECIAL_COLOURS = {"image": "#222222", "order": "#9e9e9e"}
#: The part of the variance no single factor explains (interactions), in stacked bars.
REMAINDER_COLOUR = "#d9d9d9"


def factor_colours(players: Sequence[str]) -> dict[str, str]:
    """Map each player to its colour: augmentations cycle through FACTOR_COLOURS in run order."""
    colours: dict[str, str] = {}
    k = 0
    for player in players:
        if player in SPECIAL_COLOURS:
            colours[player] = SPECIAL_COLOURS[player]
        else:
            colours[player] = FACTOR_COLOURS[k % len(FACTOR_COLOURS)]
            k += 1
    return colours
