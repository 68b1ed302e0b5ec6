"""A light core: lazy imports, a fast `headvec --help`, extras with one install message, one device rule."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import headvec
from headvec._optional import EXTRAS, MissingDependencyError, require
from headvec.cli import LAZY_GROUPS, app
from headvec.cli.common import DEFAULT_DEVICE
from headvec.errors import HeadvecError

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "sklearn", "fastapi", "uvicorn", "ray", "trl", "matplotlib", "openai")


def imported_after(code: str) -> set[str]:
    """Top-level packages in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.slow
def test_import_headvec_and_help_load_no_heavy_package():
    assert not imported_after("import headvec") & set(HEAVY)
    help_run = "from headvec.cli import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass"
    assert not imported_after(help_run) & set(HEAVY)


@pytest.mark.slow
def test_headengine_imports_torch_and_nothing_of_transformers_or_the_extras():
    modules = imported_after("from headvec import HeadEngine")
    assert "torch" in modules
    assert not modules & {"transformers", "sklearn", "fastapi", "ray", "trl", "matplotlib", "openai"}


def test_lazy_init_halves_agree_and_every_name_resolves():
    tree = ast.parse((ROOT / "src" / "headvec" / "__init__.py").read_text())
    checking = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    typed = {
        node.module.removeprefix("headvec."): sorted(alias.name for alias in node.names)
        for node in checking.body
        if isinstance(node, ast.ImportFrom)
    }
    assert typed == {module: sorted(names) for module, names in headvec._import_structure.items()}
    for name in headvec.__all__:
        assert getattr(headvec, name) is not None
    assert set(headvec.__all__) <= set(dir(headvec))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        headvec.nope  # noqa: B018


def test_every_command_group_has_working_help_and_its_listed_short_help():
    runner = CliRunner()
    root = runner.invoke(app, ["--help"])
    assert root.exit_code == 0
    for name, (module, attribute, short_help) in LAZY_GROUPS.items():
        group = typer.main.get_command(getattr(__import__(module, fromlist=[attribute]), attribute))
        assert " ".join(group.help.split()).startswith(short_help), name
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, result.output
        for command in group.commands:
            result = runner.invoke(app, [name, command, "--help"])
            assert result.exit_code == 0, (name, command, result.output)
        assert name in root.output


def _options(command, path=()):
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _options(sub, (*path, name))
    else:
        for param in command.params:
            yield path, param


def test_every_device_option_of_the_model_commands_has_the_one_default():
    root = typer.main.get_command(app)
    for name in ("sav", "mtv", "rm", "bench", "serve"):
        root.get_command(None, name)  # materialize the lazy groups
    devices = [(path, p.default) for path, p in _options(root) if p.name == "device"]
    assert {path[0] for path, _ in devices} >= {"sav", "mtv", "rm", "bench", "serve"}
    assert [d for d in devices if d[1] != DEFAULT_DEVICE] == []


def test_require_names_the_extra_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'headvec\[plot\]'") as info:
        require("matplotlib", feature="SAV plots")
    assert isinstance(info.value, HeadvecError) and isinstance(info.value, ImportError)
    assert "\n" not in str(info.value) and str(info.value).startswith("SAV plots needs")
    with pytest.raises(MissingDependencyError, match=r"headvec\[serve\]"):
        require("headvec_no_such_package", extra="serve")
    assert require("json").dumps([1]) == "[1]"


def test_a_plot_without_matplotlib_is_a_one_line_install_hint(monkeypatch, tmp_path):
    from headvec.evaluation.mtv import plot_loss_curves

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'headvec\[plot\]'"):
        plot_loss_curves({"t": {"loss_curve": [1.0]}}, tmp_path / "x.png")


def test_heavy_dependencies_are_extras_and_test_installs_them_all():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {dep.split(">")[0].split("=")[0].split("[")[0] for dep in project["dependencies"]}
    extras = project["optional-dependencies"]
    assert not core & {
        "fastapi",
        "uvicorn",
        "httpx",
        "ray",
        "trl",
        "peft",
        "matplotlib",
        "openai",
        "gymnasium",
    }
    for extra, package in EXTRAS.values():
        assert any(dep.startswith(package) for dep in extras[extra]), (extra, package)
    named = {e for dep in extras["test"] if dep.startswith("headvec[") for e in dep[8:-1].split(",")}
    assert named == {"serve", "ray", "trl", "plot", "openai", "rl", "docs"}


def test_debug_env_shows_the_traceback(monkeypatch, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["info", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "error:" in result.output
    monkeypatch.setenv("HEADVEC_DEBUG", "1")
    result = runner.invoke(app, ["info", str(tmp_path / "missing")])
    assert isinstance(result.exception, HeadvecError)
