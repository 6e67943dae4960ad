"""What a distribution of the package carries: licence, type-hint marker, changelog, and a user install that does
not pull the development tools."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import perceivers

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_license_file_matches_the_declared_license():
    declared = PROJECT["license"]["text"]
    assert declared == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the whole text, not a stub


def test_package_ships_its_type_hints():
    assert (Path(perceivers.__file__).parent / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["perceivers"]


def test_changelog_has_the_current_version_and_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text
    assert f"## [{perceivers.__version__}]" in text
    assert PROJECT["version"] == perceivers.__version__


def test_user_install_pulls_no_test_or_development_tools():
    runtime = _requirement_names(PROJECT["dependencies"])
    dev_tools = {"pytest", "hypothesis", "ruff", "transformers", "matplotlib", "onnxruntime", "perceiver-pytorch"}
    assert not runtime & dev_tools, runtime & dev_tools
    assert "torch" in runtime
    # the README's test command needs the test tools: the dev extra carries them
    assert {"pytest", "hypothesis"} <= _requirement_names(PROJECT["optional-dependencies"]["dev"])


def test_torch_range_stays_open():
    torch_req = next(r for r in PROJECT["dependencies"] if r.lower().startswith("torch"))
    assert ">=" in torch_req and "==" not in torch_req and "<" not in torch_req


def test_import_and_command_line_start_without_torch():
    """``import perceivers`` and the command line's module import no torch, so a Ctrl-C while the command starts
    falls inside ``main()`` (one line, exit 130) rather than inside an import."""
    import subprocess
    import sys

    code = ("import sys, perceivers, perceivers.cli.main\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_public_names_resolve_lazily():
    for name in perceivers.__all__:
        assert getattr(perceivers, name) is not None, name
    assert set(perceivers.__all__) <= set(dir(perceivers))
    from perceivers.models.hip.model import HiP

    assert perceivers.HiP is HiP
    try:
        perceivers.NoSuchName  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchName" in str(exc)
    else:
        raise AssertionError("an unknown attribute must raise AttributeError")
