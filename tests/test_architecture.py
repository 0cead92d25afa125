"""Architecture floors of issue 22, checked by reading the source (no imports of the package).

1. no import cycle between the package's modules (imports inside function bodies count);
2. ``core/`` never imports a GUI library;
3. every family folder has the six files of a family;
4. no source file over 400 lines;
5. the CLI names no family;
6. every function-level import of the package's own modules says why with a ``# deferred:`` comment.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "napari_instance_tuner"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE
CORE = SRC / "core"
MAX_LINES = 400
GUI_LIBRARIES = ("qtpy", "PySide2", "PySide6", "PyQt5", "PyQt6", "magicgui", "napari", "superqt", "vispy")
FAMILY_FILES = ("family.py", "model.py", "targets.py", "loss.py", "postprocess.py", "train.py")
FAMILY_WORDS = ("three-branch", "three_branch", "layering", "maskrcnn", "mask r-cnn")


def module_name(path: Path) -> str:
    """Dotted module name of a source file (``core/__init__.py`` -> ``napari_instance_tuner.core``)."""
    parts = (PACKAGE, *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def imported_modules(path: Path, modules: set[str], tree: ast.AST | None = None) -> list[tuple[str, ast.AST]]:
    """Modules of the package that ``path`` imports anywhere in the file, with the import node.

    Relative imports are resolved against the file's package; ``from package import name`` counts as an
    import of ``package.name`` when that is a module, else of ``package``.
    """
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree or ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` of a name inside ``a.b``
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((target, node))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at any depth of the file)."""
    files = {module_name(p): p for p in source_files()}
    modules = set(files)
    return {name: {target for target, _ in imported_modules(path, modules)} for name, path in files.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module (the import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # recursion depth = longest import chain (tens), fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def function_level_imports(path: Path, modules: set[str]) -> list[tuple[ast.AST, str]]:
    """(import node, module) of every import of the package's own modules inside a function body."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inner: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inner.update(id(child) for child in ast.walk(node) if child is not node)
    return [(node, target) for target, node in imported_modules(path, modules, tree) if id(node) in inner]


def test_strongly_connected_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = strongly_connected(import_graph())
    assert not cycles, "import cycles (function-level imports count):\n" + "\n".join(map(" <-> ".join, cycles))


def test_core_imports_no_gui_library():
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            where = f"{path.relative_to(SRC)}:{node.lineno}"
            offenders += [f"{where} {name}" for name in names if name.split(".")[0] in GUI_LIBRARIES]
    assert not offenders, "core/ imports a GUI library:\n" + "\n".join(offenders)


def test_every_family_folder_has_the_six_files():
    folders = [p for p in sorted((CORE / "families").iterdir()) if p.is_dir() and not p.name.startswith("_")]
    assert folders
    missing = [f"{folder.name}/{name}" for folder in folders for name in FAMILY_FILES if not (folder / name).is_file()]
    assert not missing, f"family folders lack: {missing}"


def test_no_source_file_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in source_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"source files over {MAX_LINES} lines: {long}"


def test_cli_names_no_family():
    cli_files = [SRC / "cli.py", *sorted(SRC.glob("cli_*.py")), *sorted(SRC.glob("cli/**/*.py"))]
    offenders = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for path in cli_files
        if path.is_file()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if any(word in line.lower() for word in FAMILY_WORDS)
    ]
    assert not offenders, "the CLI names a family:\n" + "\n".join(offenders)


def test_function_level_imports_of_the_package_say_why():
    modules = set(import_graph())
    undocumented = []
    for path in source_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node, target in function_level_imports(path, modules):
            # the comment may sit on the line above the import or on any of its lines
            if not any("# deferred:" in line for line in lines[node.lineno - 2 : node.end_lineno]):
                undocumented.append(f"{path.relative_to(SRC)}:{node.lineno} {target}")
    assert not undocumented, "function-level imports of the package without '# deferred:':\n" + "\n".join(
        undocumented
    )


def test_tests_take_shared_helpers_as_fixtures():
    """Tests reach the shared helpers of ``tests/conftest.py`` as pytest fixtures, never by importing conftest."""
    tests = Path(__file__).resolve().parent
    offenders = [str(p.relative_to(tests)) for p in sorted(tests.rglob("*.py"))
                 if p.name != "conftest.py" and any(
                     isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "conftest"
                     or isinstance(n, ast.Import) and any(a.name.split(".")[0] == "conftest" for a in n.names)
                     for n in ast.walk(ast.parse(p.read_text())))]
    assert not offenders, f"tests importing conftest instead of using its fixtures: {offenders}"
