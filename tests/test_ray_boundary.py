"""Only the Ray shell modules may import ray: the core stays plain functions over files."""
from __future__ import annotations

import ast
from pathlib import Path

RAY_SHELL = {"ray_exec.py", "sweep.py"}
PACKAGE = Path(__file__).resolve().parent.parent / "cdray"


def imports_ray(path: Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ray" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray":
            return True
    return False


def test_only_shell_modules_import_ray():
    offenders = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in RAY_SHELL and imports_ray(p))
    assert offenders == [], f"modules outside the Ray shell import ray: {offenders}"


def test_the_shell_really_uses_ray():
    assert all(imports_ray(PACKAGE / name) for name in RAY_SHELL)


def test_every_module_has_a_docstring():
    missing = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"
               and not ast.get_docstring(ast.parse(p.read_text()))]
    assert missing == []
