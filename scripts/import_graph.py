"""The import graph of headvec's packages, from the source (``ast``), as a mermaid picture.

``python scripts/import_graph.py`` prints the mermaid block of ``docs/architecture.md``;
``tests/test_architecture.py`` checks that the block matches the source and that neither the package
graph nor the module graph has a cycle. Every import counts, including those inside functions (the lazy
ones) and under ``TYPE_CHECKING``: a cycle through a lazy import is still a cycle in the design.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "headvec"

# Units of the picture: a subpackage or a top-level module of headvec; "headvec" is the package's own
# __init__ (the lazy top-level names). The core modules are drawn in one box; the support modules
# (errors, one-line messages; data, JSONL reading; stats, bootstrap CIs; parallel, Ray actors;
# _optional, extras) import
# nothing but errors, may be imported by anything, and are left out of the picture to keep it legible.
CORE = ("models", "arch", "engine", "cache")
SUPPORT = ("errors", "data", "stats", "parallel", "_optional")
LABELS = {
    "headvec": "headvec (top-level names, lazy)",
    "cli": "cli (headvec command)",
    "demo": "demo (make demo)",
    "evaluation": "evaluation (method vs baselines)",
    "harness": "harness (reward benchmarks)",
    "serving": "serving (serve rm, serve chat)",
    "toyworld": "toyworld (data, toy model, adapters)",
    "feedback": "feedback (VLFeedback pools, annotators, pairs)",
    "alignment": "alignment (DPO through TRL)",
    "rewards": "rewards (protocols, judges, runner)",
    "methods": "methods (SAV, MTV, head search, CCoT, IC, LSAR)",
    "redteam": "redteam (ReMiss suffixes, backdoor scan)",
    "testing": "testing (tiny models)",
    "rl": "rl (offline-RL pretraining: CurrMask, PDT)",
    "models": "models: load, LoadedModel",
    "arch": "arch: heads of the backbone",
    "engine": "engine: capture, patch, generate",
    "cache": "cache: activations on disk",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_graph() -> dict[str, set[str]]:
    """headvec module -> the headvec modules it imports (``from headvec.x import y`` counts y when it is
    a module, else x)."""
    modules = {module_name(path): path for path in sorted(SRC.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
                imported |= submodules or {node.module}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def unit(module: str) -> str:
    """``headvec.rewards.judges`` -> ``rewards``; ``headvec`` -> ``headvec``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph() -> dict[str, set[str]]:
    """Unit -> the other units it imports."""
    graph: dict[str, set[str]] = {}
    for module, imported in module_graph().items():
        graph.setdefault(unit(module), set()).update(unit(m) for m in imported if unit(m) != unit(module))
    return graph


def picture_edges() -> set[tuple[str, str]]:
    """The edges the picture draws: the package graph without the support modules, with a package's
    imports of core modules drawn as one edge to ``core`` (edges inside the core are drawn as they are)."""
    edges = set()
    for a, targets in package_graph().items():
        for b in targets - set(SUPPORT):
            if a in SUPPORT:
                continue
            edges.add((a, "core" if b in CORE and a not in CORE else b))
    return edges


def mermaid() -> str:
    """The mermaid block of docs/architecture.md (nodes in a fixed order, edges sorted)."""
    outer = sorted(set(package_graph()) - set(CORE) - set(SUPPORT))
    lines = ["```mermaid", "flowchart TD"]
    lines += [f'    {node_id(u)}["{LABELS.get(u, u)}"]' for u in outer]
    lines.append('    subgraph core["headvec core"]')
    lines += [f'        {node_id(u)}["{LABELS.get(u, u)}"]' for u in CORE]
    lines.append("    end")
    lines += [f"    {node_id(a)} --> {node_id(b)}" for a, b in sorted(picture_edges())]
    lines.append("```")
    return "\n".join(lines)


def node_id(unit_name: str) -> str:
    """Mermaid node ids: the unit name; ``headvec`` (the package itself) becomes ``api``."""
    return "api" if unit_name == "headvec" else unit_name


def mermaid_edges(text: str) -> set[tuple[str, str]]:
    """The ``a --> b`` edges of the first mermaid block in ``text``, as unit names."""
    block = text.split("```mermaid", 1)[1].split("```", 1)[0]
    edges = set()
    for line in block.splitlines():
        if "-->" in line:
            a, b = (part.strip() for part in line.split("-->"))
            edges.add(("headvec" if a == "api" else a, "headvec" if b == "api" else b))
    return edges


if __name__ == "__main__":
    sys.stdout.write(mermaid() + "\n")
