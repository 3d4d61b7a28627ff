"""The units of code a stage runs: cdray modules and top-level functions, found by following a
builder's names and imports, each digested by its syntax tree without comments or docstrings."""
from __future__ import annotations

import ast
import copy
import functools
import hashlib
from pathlib import Path
from typing import Optional

PACKAGE = "cdray"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
DIGEST_LENGTH = 16


# Modules (or whole packages) that decide where, when and whether an artifact is built, how it is
# stored, keyed, logged or shown, never what it holds for a given config and inputs: a stage reached
# them by import, but their code is not the stage's. Not followed further either. The stage table
# itself is here: a version bump must not change the code it vouches for.
PLUMBING = (
    "cdray.cli", "cdray.sweep", "cdray.tracking",
    "cdray.shell",  # the Ray shell places a builder's work; the builders and their modules do it
    "cdray.common.console", "cdray.common.faults", "cdray.common.redaction", "cdray.common.signals",
    "cdray.common.uris",
    "cdray.common.files",  # atomic writes, fsync, checksums
    "cdray.config.errors",  # validation messages and field markers
    "cdray.config.loading", "cdray.config.reference",
    # keys and inputs: what a key holds is the key's business, not the code's
    "cdray.dag.artifacts", "cdray.dag.code_units", "cdray.dag.graph", "cdray.dag.keys", "cdray.dag.remote",
    "cdray.dag.stage_code",
    "cdray.dag.stages", "cdray.dag.store",
    "cdray.data.folders",  # finds and mirrors data folders, whose content the keys hold by digest
    "cdray.dag.run_config",  # a run's execution knobs and where its data is, for the builders
)


def is_plumbing(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in PLUMBING)


# ---- modules of the package and their syntax trees


@functools.cache
def module_path(module: str) -> Optional[Path]:
    """The file of a cdray module or package, None outside cdray or when there is none."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = PACKAGE_DIR.parent.joinpath(*module.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def unit_name(path: Path, function: Optional[str] = None) -> str:
    """How a unit of code is named in pins and messages: its file from the repository root
    (cdray/data/corpus.py), with ::name for one function of a module."""
    rel = path.relative_to(PACKAGE_DIR.parent).as_posix()
    return f"{rel}::{function}" if function else rel


_trees: dict[Path, ast.Module] = {}  # files are read once a process
_digests: dict[tuple[Path, Optional[str]], str] = {}


def parse(path: Path) -> ast.Module:
    if path not in _trees:
        _trees[path] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return _trees[path]


def unit_digest(path: Path, node: ast.AST, function: Optional[str] = None) -> str:
    """The digest of a module (or of one of its top-level definitions, `node`)."""
    if (path, function) not in _digests:
        _digests[path, function] = digest(copy.deepcopy(node))
    return _digests[path, function]


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = _package_of(module, path).split(".")
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def defining_module(module: str, name: Optional[str] = None, _seen: frozenset = frozenset()) -> Optional[str]:
    """The cdray module that `from module import name` (or `import module`) reads: a submodule
    named `name`, else the module a package's __init__ re-exports `name` from, else the module
    itself; None outside cdray."""
    path = module_path(module)
    if path is None:
        return None
    if name is None:
        return module
    if module_path(f"{module}.{name}") is not None:
        return f"{module}.{name}"
    if path.name == "__init__.py" and module not in _seen:
        for node in parse(path).body:
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) == name:
                        found = defining_module(_absolute(module, path, node), alias.name, _seen | {module})
                        if found is not None:
                            return found
    return module


def imported_modules(module: str, path: Path, node: ast.AST) -> set[str]:
    """The cdray modules an import statement reads."""
    if isinstance(node, ast.Import):
        return {m for a in node.names if (m := defining_module(a.name)) is not None}
    if isinstance(node, ast.ImportFrom):
        base = _absolute(module, path, node)
        return {m for a in node.names if (m := defining_module(base, a.name)) is not None}
    return set()


# ---- digests


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:]
    return tree


def _shape(value) -> str:
    """A syntax tree as text without positions; fields that are None or empty are left out, so the
    text is the same on the Python versions whose trees differ only by such fields."""
    if isinstance(value, ast.AST):
        fields = ",".join(f"{name}={_shape(v)}" for name in value._fields
                          if (v := getattr(value, name, None)) is not None and v != [])
        return f"{type(value).__name__}({fields})"
    if isinstance(value, list):
        return "[" + ",".join(_shape(v) for v in value) + "]"
    return repr(value)


def digest(tree: ast.AST) -> str:
    """sha256 of a syntax tree without its docstrings: comments, docstrings and formatting aside."""
    return hashlib.sha256(_shape(_without_docstrings(tree)).encode()).hexdigest()[:DIGEST_LENGTH]


# ---- what a stage's code is


class _Names(ast.NodeVisitor):
    """The names a function's code reads, its type annotations aside (they compute nothing)."""

    def __init__(self):
        self.names: set[str] = set()
        self.bound: set[str] = set()  # names the function binds itself: they shadow the module's
        self.imports: list[ast.AST] = []

    def visit_Name(self, node: ast.Name) -> None:
        (self.names if isinstance(node.ctx, ast.Load) else self.bound).add(node.id)

    def visit_arg(self, node: ast.arg) -> None:
        self.bound.add(node.arg)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.visit(node.target)
        if node.value is not None:
            self.visit(node.value)

    def _function(self, node) -> None:
        self.bound.add(node.name)
        for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs + [node.args.vararg, node.args.kwarg]:
            if a is not None:
                self.visit(a)
        for d in node.decorator_list:
            self.visit(d)
        for d in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
            self.visit(d)
        for stmt in node.body:
            self.visit(stmt)

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_Import(self, node) -> None:
        self.imports.append(node)
        self.bound.update(a.asname or a.name.split(".")[0] for a in node.names)

    visit_ImportFrom = visit_Import


def _definitions(tree: ast.Module) -> dict[str, ast.AST]:
    out: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                if isinstance(target, ast.Name):
                    out[target.id] = node
    return out


def _top_imports(module: str, path: Path, tree: ast.Module) -> dict[str, set[str]]:
    """Each name a module's top-level imports bind, and the cdray modules it stands for."""
    out: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                m = defining_module(a.name)
                out[a.asname or a.name.split(".")[0]] = {m} if m else set()
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, path, node)
            for a in node.names:
                m = defining_module(base, a.name)
                out[a.asname or a.name] = {m} if m else set()
    return out


def builder_units(fn) -> tuple[dict[str, str], set[str]]:
    """A builder's own units of code (digest by name) and the cdray modules they import: the
    builder and every function, class or constant of its module it reads, by name, in turn."""
    fn = getattr(fn, "func", fn)  # a functools.partial
    module = fn.__module__
    path = module_path(module)
    tree = parse(path)
    defs = _definitions(tree)
    if fn.__qualname__ not in defs:  # not a top-level function: its whole module is its code
        return {}, {module}
    top = _top_imports(module, path, tree)
    units: dict[str, str] = {}
    modules: set[str] = set()
    todo = [fn.__qualname__]
    while todo:
        name = todo.pop()
        if unit_name(path, name) in units:
            continue
        node = defs[name]
        units[unit_name(path, name)] = unit_digest(path, node, name)
        seen = _Names()
        seen.visit(node)
        for stmt in seen.imports:
            modules |= imported_modules(module, path, stmt)
        for ref in seen.names - seen.bound:
            if ref in defs and ref != name:
                todo.append(ref)
            elif ref in top:
                modules |= top[ref]
    return units, modules


@functools.cache
def _imports_of(module: str) -> frozenset[str]:
    """Every cdray module a module imports, at top level or inside a function; a registry package
    that imports its every module by listing its folder (cdray.decode.truncation) imports them all."""
    path = module_path(module)
    found = frozenset().union(*(imported_modules(module, path, node) for node in ast.walk(parse(path))))
    if path.name == "__init__.py" and "pkgutil.iter_modules(__path__)" in path.read_text(encoding="utf-8"):
        found |= {f"{module}.{p.stem}" for p in path.parent.glob("*.py") if p.stem != "__init__"}
    return found


def module_closure(roots: set[str]) -> dict[str, str]:
    """Every cdray module reachable from `roots` by import (at top level or inside a function),
    plumbing left out and not followed, with its digest, by unit name."""
    units: dict[str, str] = {}
    todo = sorted(roots)
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen or is_plumbing(module):
            continue
        seen.add(module)
        path = module_path(module)
        units[unit_name(path)] = unit_digest(path, parse(path))
        todo.extend(sorted(_imports_of(module) - seen))
    return units
