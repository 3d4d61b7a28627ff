"""Only the Ray shell (cdray/shell/) may import ray: the core stays plain functions over files, and
the commands that run no stage (plan, report, verify) never load Ray."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cdray"
SHELL = PACKAGE / "shell"
MODULES = sorted(PACKAGE.rglob("*.py"))


def imports_ray(path: Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ray" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray":
            return True
    return False


def test_only_shell_modules_import_ray():
    offenders = sorted(str(p.relative_to(PACKAGE)) for p in MODULES
                       if SHELL not in p.parents and imports_ray(p))
    assert offenders == [], f"modules outside the Ray shell import ray: {offenders}"


# what a run must settle before ray is imported (Ray reads its settings once, on import)
BEFORE_RAY = ("__init__.py", "local_cluster.py")


def test_the_shell_really_uses_ray():
    assert all(imports_ray(p) for p in SHELL.glob("*.py") if p.name not in BEFORE_RAY)
    assert not any(imports_ray(SHELL / name) for name in BEFORE_RAY)


def test_every_module_and_package_has_a_docstring():
    missing = [str(p.relative_to(PACKAGE)) for p in MODULES if not ast.get_docstring(ast.parse(p.read_text()))
               and not (p.name == "__init__.py" and p.parent == PACKAGE)]
    assert missing == []


@pytest.mark.parametrize("command", ["plan", "report", "verify"])
def test_commands_that_run_no_stage_never_import_ray(command, tmp_path):
    root = PACKAGE.parent
    code = (f"import sys; from cdray.cli import main; "
            f"code = main([{command!r}, {str(root / 'sweeps' / 'tiny.yaml')!r}, '--set', "
            f"'store.root={tmp_path / 'store'}', '--set', 'tracking.uri=sqlite:///{tmp_path / 'm.db'}']); "
            f"print('RAY' if 'ray' in sys.modules else 'NO RAY', code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert "NO RAY" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
