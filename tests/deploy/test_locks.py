"""The locks that `make install`, `make test` and the image install from, checked against pyproject.toml.

`make lock` writes them. These tests catch a pyproject.toml edited without `make lock` (the installs use
--no-deps, so a dependency missing from a lock would only show as an ImportError), and a runtime lock that
drifted from the test lock (the image would run versions the suite never ran).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import ROOT

RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"
TEST_LOCK = ROOT / "requirements" / "test.lock"


class Pin(NamedTuple):
    requirement: str  # name==version, with its environment marker
    hashes: frozenset[str]


def pins(lock: Path) -> dict[str, list[Pin]]:
    """Canonical name → its pins (several when the versions differ by Python version or platform)."""
    found: dict[str, list[Pin]] = {}
    # Each entry: `name==version [; marker] \` at the start of a line, then indented --hash and # via lines.
    for entry in re.split(r"\n(?=\S)", lock.read_text()):
        if entry.startswith("#") or not entry.strip():
            continue
        first, *rest = entry.splitlines()
        requirement = first.rstrip(" \\")
        hashes = frozenset(line.strip(" \\") for line in rest if line.strip().startswith("--hash="))
        found.setdefault(canonicalize_name(Requirement(requirement).name), []).append(Pin(requirement, hashes))
    return found


def pyproject() -> dict[str, Any]:
    document: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return document


def suite_extras() -> list[str]:
    """The extras `make test` installs (the Makefile's TEST_EXTRAS, which `make lock` resolves)."""
    found = re.search(r"(?m)^TEST_EXTRAS\s*:=\s*(.+)$", (ROOT / "Makefile").read_text())
    assert found is not None, "the Makefile defines no TEST_EXTRAS"
    return found.group(1).split()


def declared(extras: list[str]) -> list[Requirement]:
    """The build backend, the runtime dependencies and those of `extras`, as pyproject.toml declares them."""
    document = pyproject()
    texts = [*document["build-system"]["requires"], *document["project"]["dependencies"]]
    texts += [text for extra in extras for text in document["project"]["optional-dependencies"][extra]]
    return [Requirement(text) for text in texts]


@pytest.mark.parametrize(
    ("lock", "extras"), [(RUNTIME_LOCK, []), (TEST_LOCK, suite_extras())], ids=["runtime.lock", "test.lock"]
)
def test_each_lock_pins_every_dependency_pyproject_declares_within_its_range(lock: Path, extras: list[str]) -> None:
    locked = pins(lock)
    for requirement in declared(extras):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not in {lock.name}: run `make lock`"
        for pin in locked[name]:
            version = pin.requirement.split("==", 1)[1].split(";", 1)[0].strip()
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{lock.name} pins {pin.requirement}, outside {requirement}: run `make lock`"
            )


def test_the_test_lock_covers_every_extra_pyproject_declares() -> None:
    # An extra the suite does not install is an extra no test has run with.
    assert sorted(suite_extras()) == sorted(pyproject()["project"]["optional-dependencies"])


def test_the_image_installs_exactly_the_versions_and_files_the_suite_ran_with() -> None:
    tested = pins(TEST_LOCK)
    for name, runtime_pins in pins(RUNTIME_LOCK).items():
        assert name in tested, f"{name} is in the runtime lock only: the suite never ran with it"
        for pin in runtime_pins:
            assert pin.hashes, f"{pin.requirement}: no hashes"
            assert pin in tested[name], f"{pin.requirement} differs from the test lock's {tested[name]}"
