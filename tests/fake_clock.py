"""A hand-moved clock for unit tests of code that reads `time.monotonic()`."""

from __future__ import annotations

import types

import pytest


class Clock:
    """Stands in for the `time` module a module reads: only `monotonic()`, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def install(monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> Clock:
    """Replace `module`'s `time` with a fake clock for the test."""
    fake = Clock()
    monkeypatch.setattr(module, "time", fake)
    return fake
