"""Scrambled Sobol' pick-freeze designs, addressable by block (see :mod:`augsense.design.core`)."""

from augsense.design.core import Design, DesignBlock, make_design

__all__ = ["Design", "DesignBlock", "make_design"]
