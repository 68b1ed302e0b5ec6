"""The reward stack's layering: rewards imports neither the harness nor the toy world, the harness and the
servers import no toy world, and no private name crosses a package boundary."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "headvec"
FORBIDDEN = {
    "rewards": ("headvec.harness", "headvec.toyworld", "headvec.serving", "headvec.cli"),
    "harness": ("headvec.toyworld", "headvec.serving", "headvec.cli"),
    "serving": ("headvec.toyworld", "headvec.harness", "headvec.cli"),
}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for every import in a file, functions' bodies included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering_and_no_private_names_across_packages(package):
    files = sorted((SRC / package).glob("*.py"))
    assert files, f"no modules found in {SRC / package}"
    problems = []
    for path in files:
        for module, names in imports(path):
            if module.startswith(FORBIDDEN[package]):
                problems.append(f"{path.name} imports {module}")
            other_package = module.startswith("headvec.") and not module.startswith(f"headvec.{package}")
            private = [name for name in names if name.startswith("_")]
            if other_package and private:
                problems.append(f"{path.name} imports private {private} from {module}")
    assert problems == []


def test_the_toyworld_adapters_are_the_only_bridge():
    from headvec.rewards.verdicts import TOY_FORMAT, TOY_JUDGE_FORMAT
    from headvec.toyworld.tasks import judge_prompt

    # The toy judge prompt is written once in the reward stack; it must be what the toy model learnt.
    assert TOY_FORMAT.text("how many red objects ?", "two") == judge_prompt("how many red objects ?", "two")
    assert TOY_JUDGE_FORMAT.text("<image>\nhow many ?", "two .") == judge_prompt("how many ?", "two")


def test_toy_preferences_convert_to_pairs_with_the_same_image():
    from headvec.toyworld.adapters import pairs_from_toy, preference_pair
    from headvec.toyworld.export import generate

    toy = generate("preference", 0, 8, "test")
    pairs = pairs_from_toy(None, 0, 8, "test")
    assert [(p.prompt, p.chosen, p.rejected, p.category) for p in pairs] == [
        (t.query, t.chosen, t.rejected, t.category) for t in toy
    ]
    assert list(pairs[0].image().getdata()) == list(toy[0].image().convert("RGB").getdata())
    assert len({p.uid for p in pairs}) == 8
    assert pairs_from_toy("flipped", 0, 8, "test") == [p for p in pairs if p.category == "flipped"]
    assert preference_pair(toy[0], "x").id == "x"
