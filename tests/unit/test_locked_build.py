"""The build is locked: each virtualenv and node_modules hold exactly what their lock pins, and every pin has hashes."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements"
SUITE_LOCK = REQUIREMENTS / "suite.txt"
PATRONI_LOCK = REQUIREMENTS / "patroni.txt"
UV_LOCK = REQUIREMENTS / "uv.txt"
PYTHON_LOCKS = [SUITE_LOCK, PATRONI_LOCK, UV_LOCK]
NODE_DIR = ROOT / "tools" / "node"
NODE_MODULES = ROOT / ".tools" / "node" / "node_modules"
VENVS = {SUITE_LOCK: ROOT / ".venv", PATRONI_LOCK: ROOT / ".tools" / "patroni"}

# Run by a virtualenv's own python: its distributions and the values PEP 508 markers are evaluated against, so that a
# lock's markers (the Patroni lock is for any platform) are read as that interpreter would.
_LIST_DISTRIBUTIONS = """
import importlib.metadata, json, os, platform, sys
info = sys.implementation.version
version = f"{info.major}.{info.minor}.{info.micro}" + ("" if info.releaselevel == "final" else info.releaselevel[0] + str(info.serial))
env = {
    "implementation_name": sys.implementation.name, "implementation_version": version, "os_name": os.name,
    "platform_machine": platform.machine(), "platform_release": platform.release(),
    "platform_system": platform.system(), "platform_version": platform.version(),
    "python_full_version": platform.python_version(), "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]), "sys_platform": sys.platform,
}
dists = [[d.metadata["Name"], d.version] for d in importlib.metadata.distributions()]
print(json.dumps({"env": env, "dists": dists}))
"""


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: tuple[str, ...]
    marker: Marker | None


def _entries(lock: Path) -> list[str]:
    """The lock's requirement entries, each with its continuation lines joined and its comments dropped."""
    text = re.sub(r"\\\n", " ", lock.read_text())
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def _pins(lock: Path) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    for entry in _entries(lock):
        # Only `name==version [; marker] --hash=...` entries: no option lines (an index, an editable install).
        assert not entry.startswith("-"), f"{lock.name}: {entry}"
        spec, *options = (part.strip() for part in re.split(r"\s--", entry))
        requirement = Requirement(spec)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==" and "*" not in specifier.version, f"{lock.name}: {spec} is not pinned"
        assert all(option.startswith("hash=") for option in options), f"{lock.name}: {entry}"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{lock.name}: {name} pinned twice"
        pins[name] = Pin(name, specifier.version, tuple(o.removeprefix("hash=") for o in options), requirement.marker)
    return pins


def _installed(python: Path) -> tuple[dict[str, str], dict[str, str]]:
    """A virtualenv's distributions (canonical name to version) and its marker environment."""
    out = json.loads(subprocess.run([str(python), "-c", _LIST_DISTRIBUTIONS], capture_output=True, text=True,
                                    check=True, timeout=60).stdout)
    installed: dict[str, str] = {}
    for name, version in out["dists"]:
        name = canonicalize_name(name)
        # Two metadata folders of one name (a stale one left by an upgrade) would make the version ambiguous.
        assert installed.setdefault(name, version) == version, f"{python}: {name} installed as {installed[name]} and {version}"
    return installed, out["env"]


@pytest.mark.parametrize("lock", PYTHON_LOCKS, ids=lambda p: p.name)
def test_every_python_pin_is_exact_and_has_hashes(lock):
    pins = _pins(lock)
    assert pins, lock
    for pin in pins.values():
        assert pin.hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), pin
    # Locked, so that nothing unpinned is fetched when the venv is made: pip itself and the build backend.
    if lock != UV_LOCK:
        assert {"pip", "setuptools"} <= pins.keys()
    print(f"{lock.name}: {len(pins)} pins, {sum(len(p.hashes) for p in pins.values())} hashes")


def _wanted(source: list[str], pins: dict[str, Pin]) -> None:
    """Each requirement of the source has a pin its range allows: the lock was computed since the last change."""
    for line in source:
        requirement = Requirement(line)
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement} is not in the lock: run `make lock`"
        assert requirement.specifier.contains(Version(pin.version), prereleases=True), \
            f"{requirement} does not allow the locked {pin.version}: run `make lock`"


def _requirement_lines(path: Path) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines() if line.split("#", 1)[0].strip()]


def test_the_locks_satisfy_their_ranges():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    suite_in = _requirement_lines(REQUIREMENTS / "suite.in")
    # suite.in's setuptools is the range the project builds with: [build-system] requires.
    build = [Requirement(r) for r in pyproject["build-system"]["requires"]]
    assert {str(r) for r in build} <= {str(Requirement(r)) for r in suite_in}, suite_in
    _wanted([*pyproject["project"]["dependencies"], *pyproject["project"]["optional-dependencies"]["dev"], *suite_in],
            _pins(SUITE_LOCK))
    _wanted(_requirement_lines(REQUIREMENTS / "patroni.in"), _pins(PATRONI_LOCK))
    _wanted(_requirement_lines(REQUIREMENTS / "uv.in"), _pins(UV_LOCK))


@pytest.mark.parametrize("lock", [SUITE_LOCK, PATRONI_LOCK], ids=lambda p: p.name)
def test_each_virtualenv_holds_exactly_its_lock(lock):
    venv = VENVS[lock]
    python = venv / "bin" / "python"
    assert python.exists(), f"{venv} is made by `make setup`"
    installed, env = _installed(python)
    # The project itself is installed from the working tree, in editable mode, beside the lock.
    installed.pop(canonicalize_name(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]), None)
    wanted = {p.name: p.version for p in _pins(lock).values() if p.marker is None or p.marker.evaluate(env)}
    missing = {name: version for name, version in wanted.items() if name not in installed}
    unlocked = {name: version for name, version in installed.items() if name not in wanted}
    other = {name: (installed[name], version) for name, version in wanted.items()
             if name in installed and Version(installed[name]) != Version(version)}
    assert not missing and not unlocked and not other, \
        f"{venv}: missing {missing}, not in the lock {unlocked}, other versions (installed, locked) {other}"
    print(f"{venv.relative_to(ROOT)}: {len(installed)} distributions, each at its locked version "
          f"({len(_pins(lock)) - len(wanted)} pins for other platforms)")


def _node_lock() -> dict:
    return json.loads((NODE_DIR / "package-lock.json").read_text())


def test_every_node_package_is_locked_with_its_integrity_hash():
    lock = _node_lock()
    packages = {path: entry for path, entry in lock["packages"].items() if path}
    assert packages
    for path, entry in packages.items():
        assert path.startswith("node_modules/") and entry.get("version"), path
        assert re.fullmatch(r"sha512-[A-Za-z0-9+/=]+", entry.get("integrity", "")), path
        # No registry address in the lock: npm fetches by name and version from whichever registry is configured,
        # and the integrity hash is what makes it the same package.
        assert "resolved" not in entry, path
    # The lock was computed from package.json as it is.
    assert lock["packages"][""]["dependencies"] == json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    print(f"package-lock.json: {len(packages)} packages, each with an integrity hash")


def _installed_node_packages(node_modules: Path) -> dict[str, str]:
    """Every package under node_modules, nested ones too, keyed by its path as package-lock.json writes it."""
    found: dict[str, str] = {}
    for manifest in node_modules.rglob("package.json"):
        relative = manifest.parent.relative_to(node_modules.parent).as_posix()
        # A package's folder is node_modules/<name> or node_modules/@scope/<name>; other package.json files are
        # a package's own (tests, sub-folders).
        if re.fullmatch(r"(node_modules/(@[^/]+/)?[^/@][^/]*/)*node_modules/(@[^/]+/)?[^/@][^/]*", relative):
            found[relative] = json.loads(manifest.read_text())["version"]
    return found


def test_node_modules_hold_exactly_the_lock():
    assert NODE_MODULES.exists(), "node_modules are installed by `make node-tools`"
    locked = {path: entry["version"] for path, entry in _node_lock()["packages"].items() if path}
    installed = _installed_node_packages(NODE_MODULES)
    missing = sorted(set(locked) - set(installed))
    unlocked = sorted(set(installed) - set(locked))
    other = {path: (installed[path], version) for path, version in locked.items()
             if path in installed and installed[path] != version}
    assert not missing and not unlocked and not other, \
        f"missing {missing}, not in the lock {unlocked}, other versions (installed, locked) {other}"
    print(f"{NODE_MODULES.relative_to(ROOT)}: {len(installed)} packages, each at its locked version "
          f"(newman {installed['node_modules/newman']}, uplot {installed['node_modules/uplot']})")
