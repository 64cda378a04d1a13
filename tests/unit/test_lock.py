"""The installed packages are exactly the lock's: a clean clone cannot drift to whatever is newest."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;(?P<marker>[^\\]*))?")


def _requirements_lock(name: str = "requirements.lock") -> dict[str, tuple[str, str | None]]:
    pins: dict[str, tuple[str, str | None]] = {}
    for line in (ROOT / name).read_text().splitlines():
        match = PIN.match(line)
        if match:
            marker = match["marker"].strip() if match["marker"] else None
            pins[canonicalize_name(match["name"])] = (match["version"], marker)
    return pins


def _poetry_lock() -> dict[str, set[str]]:
    data = tomllib.loads((ROOT / "poetry.lock").read_text())
    versions: dict[str, set[str]] = {}
    for package in data["package"]:
        versions.setdefault(canonicalize_name(package["name"]), set()).add(package["version"])
    return versions


def _torch_pin() -> str:
    match = re.search(r"^TORCH_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile names no TORCH_VERSION"
    return match.group(1)


def test_every_locked_package_is_installed_at_its_locked_version() -> None:
    pins = _requirements_lock()
    assert len(pins) > 50
    wrong = {}
    for name, (version, marker) in pins.items():
        if marker is not None and not Marker(marker).evaluate():
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            wrong[name] = (installed, version)
    assert not wrong, f"installed != locked (installed, locked): {wrong}; run `make install`"


def test_torch_is_the_locked_release() -> None:
    """torch comes from its own wheel (a CPU build here), so only its release is compared."""
    installed = Version(metadata.version("torch")).base_version
    assert installed == _torch_pin()
    assert _poetry_lock()["torch"] == {_torch_pin()}


def test_requirements_lock_is_exported_from_poetry_lock() -> None:
    """Same versions both ways, so `poetry install` and `make install` give the same set."""
    poetry = _poetry_lock()
    pins = _requirements_lock()
    stale = {name: version for name, (version, _) in pins.items() if version not in poetry.get(name, set())}
    assert not stale, f"requirements.lock disagrees with poetry.lock: {stale}; run `make lock`"
    cuda_only = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
    missing = sorted(name for name in poetry if name not in pins and not cuda_only.match(name))
    assert not missing, f"in poetry.lock but not exported: {missing}; run `make lock`"


def test_the_runtime_lock_is_the_same_versions_without_the_dev_tools() -> None:
    """The Docker image installs requirements-runtime.lock: the server's packages, same versions."""
    everything = _requirements_lock()
    runtime = _requirements_lock("requirements-runtime.lock")
    differ = {name: version for name, (version, _) in runtime.items() if everything.get(name, ("",))[0] != version}
    assert not differ, f"requirements-runtime.lock disagrees with requirements.lock: {differ}; run `make lock`"
    assert "fastapi" in runtime and "pytest" not in runtime and "schemathesis" not in runtime
