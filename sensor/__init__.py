"""Teiten sensor: the board-side package (decode, classify, aggregate, capture, spool)."""

__version__ = "0.1.0"
