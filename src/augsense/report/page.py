"""A self-contained HTML page under construction: sections of figures, tables and notices.

Figures are embedded as base64 PNG (the page needs no network and no side files) and also saved
under ``figures/`` as PNG and, for charts, SVG, so they can go into a paper.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from augsense.errors import AugsenseError


@dataclass
class Section:
    key: str
    title: str
    parts: list[str] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "figure"


def fixed(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, never "-0.000": a value that rounds to zero prints unsigned."""
    if not np.isfinite(value):
        return "–"
    text = f"{float(value):.{digits}f}"
    return text.lstrip("-") if float(text) == 0.0 else text


def interval(estimate: float, low: float, high: float, digits: int = 3) -> str:
    """"estimate [low, high]" with :func:`fixed` numbers."""
    return f"{fixed(estimate, digits)} [{fixed(low, digits)}, {fixed(high, digits)}]"


def format_number(value: object) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "–"
        magnitude = abs(float(value))
        if magnitude and (magnitude < 1e-3 or magnitude >= 1e4):
            text = f"{value:.3g}"
            return text.lstrip("-") if float(text) == 0.0 else text
        return fixed(float(value))
    return html.escape(str(value))


class ReportWriteError(AugsenseError):
    """The report's files could not be written (disk full …): stops the report, unlike a figure that fails to draw."""


class Page:
    """Collects sections; ``figure`` saves and embeds a matplotlib figure."""

    def __init__(self, figure_folder: Path) -> None:
        self.figure_folder = figure_folder
        self.sections: list[Section] = []
        self.saved: list[Path] = []
        self._slugs: set[str] = set()

    def section(self, key: str, title: str) -> Section:
        section = Section(key, title)
        self.sections.append(section)
        return section

    def figure(self, section: Section, fig: Figure, name: str, caption: str, *, vector: bool = True,
               wide: bool = True, inline_svg: bool = False) -> None:
        """Save ``fig`` as figures/<name>.png (and .svg) and embed it: base64 PNG, or the SVG itself with
        ``inline_svg`` (its elements, e.g. interval whiskers with their ids, are then part of the page)."""
        slug = _slug(name)
        while slug in self._slugs:
            slug += "-2"
        self._slugs.add(slug)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", facecolor="white")
        png = buffer.getvalue()
        try:
            self.figure_folder.mkdir(parents=True, exist_ok=True)
            (self.figure_folder / f"{slug}.png").write_bytes(png)
            self.saved.append(self.figure_folder / f"{slug}.png")
            if vector or inline_svg:
                fig.savefig(self.figure_folder / f"{slug}.svg", format="svg", facecolor="white")
                self.saved.append(self.figure_folder / f"{slug}.svg")
        except OSError as error:  # disk full: no half-written figure stays, and the report stops with one line
            for suffix in (".png", ".svg"):
                (self.figure_folder / f"{slug}{suffix}").unlink(missing_ok=True)
            raise ReportWriteError(f"cannot write the figures into {str(self.figure_folder)!r}: "
                                   f"{error.strerror or error} (free space, then run `augsense report` again)") from None
        links = [f'<a href="figures/{slug}.png">PNG</a>']
        svg = ""
        if vector or inline_svg:
            links.append(f'<a href="figures/{slug}.svg">SVG</a>')
            if inline_svg:
                text = (self.figure_folder / f"{slug}.svg").read_text(encoding="utf-8")
                svg = text[text.index("<svg"):]
                svg = svg.replace("<svg ", f'<svg role="img" aria-label="{html.escape(caption)}" ', 1)
        if svg:
            content = f'<div class="svg">{svg}</div>'
        else:
            encoded = base64.b64encode(png).decode("ascii")
            content = f'<img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
        section.parts.append(
            f'<figure class="{"wide" if wide else "narrow"}" id="fig-{slug}">{content}<figcaption>'
            f'{html.escape(caption)} <span class="files">({" · ".join(links)})</span></figcaption></figure>')

    def table(self, section: Section, table: pd.DataFrame, caption: str = "", max_rows: int = 40) -> None:
        shown = table.head(max_rows)
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
        body = "".join("<tr>" + "".join(f"<td>{format_number(v)}</td>" for v in row) + "</tr>"
                       for row in shown.itertuples(index=False))
        more = f" (first {max_rows} of {len(table)} rows)" if len(table) > max_rows else ""
        cap = f"<caption>{html.escape(caption)}{more}</caption>" if caption or more else ""
        section.parts.append(f'<div class="table"><table>{cap}<thead><tr>{head}</tr></thead>'
                             f"<tbody>{body}</tbody></table></div>")

    def notice(self, section: Section, text: str) -> None:
        section.parts.append(f'<p class="notice">{html.escape(text)}</p>')

    def text(self, section: Section, text: str) -> None:
        section.parts.append(f"<p>{html.escape(text)}</p>")

    def raw(self, section: Section, markup: str) -> None:
        section.parts.append(markup)

    def group(self, section: Section, start: bool) -> None:
        """Open/close a grid in which narrow figures sit side by side."""
        section.parts.append('<div class="grid">' if start else "</div>")
