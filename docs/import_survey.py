"""Print each xpool module's size and its imports of xpool (and bench) modules.

`python docs/import_survey.py` from the repository root. Counts `import` statements by where they
sit: at module level, or inside a function (a "function-local" import). Used for
docs/refactor-plan.md.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

ROOTS = ("xpool", "bench")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported(node: ast.AST, me: str, is_package: bool) -> list[str]:
    """The xpool/bench modules an import statement names (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] in ROOTS]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = me.split(".")
            base = base if is_package else base[:-1]
            base = base[: len(base) - node.level + 1]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        if mod.split(".")[0] in ROOTS:
            return [mod]
    return []


def survey(root: Path) -> list[tuple[str, int, list[str], list[tuple[str, int]]]]:
    rows = []
    for path in sorted((root / "xpool").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        me = module_name(path, root)
        top: list[str] = []
        local: list[tuple[str, int]] = []

        def walk(node: ast.AST, in_function: bool, me: str = me, path: Path = path,
                 top: list[str] = top, local: list[tuple[str, int]] = local) -> None:
            for child in ast.iter_child_nodes(node):
                for target in imported(child, me, path.name == "__init__.py"):
                    if in_function:
                        local.append((target, child.lineno))
                    else:
                        top.append(target)
                inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                walk(child, inner)

        walk(ast.parse(text), False)
        rows.append((me, len(text.splitlines()), sorted(set(top)), local))
    return rows


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
    rows = survey(root)
    print(f"{'module':28} {'lines':>5} {'local':>5}  function-local imports (target x count)")
    for me, lines, _top, local in sorted(rows, key=lambda r: -r[1]):
        counts = Counter(t.removeprefix("xpool.") for t, _ in local)
        detail = ", ".join(f"{t} x{n}" if n > 1 else t for t, n in sorted(counts.items()))
        print(f"{me:28} {lines:5d} {len(local):5d}  {detail}")
    local_all = [t for *_, local in rows for t, _ in local]
    n_xpool = sum(1 for t in local_all if t.startswith("xpool"))
    print(f"total: {sum(r[1] for r in rows)} lines in {len(rows)} modules; function-local imports: "
          f"{n_xpool} of xpool modules, {len(local_all) - n_xpool} of bench modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
