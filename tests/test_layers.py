"""The modules of `proxy/` import each other as a layered graph: no cycle, and every import goes
down the layers drawn in docs/INTERFACES.md ("Layers").

The graph is read from the source with `ast`, so an import inside a function (a runtime cycle
that the import system only meets when the function runs) counts like any other. Imports under
`if TYPE_CHECKING:` only name types for the checker and never run; they are left out.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROXY = REPO / "proxy"
INTERFACES = REPO / "docs" / "INTERFACES.md"

Modules = dict[str, Path]


def modules_of(package: Path) -> Modules:
    """Dotted name -> file, for every module of `package` (a package is its __init__.py)."""
    out: Modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth (functions, methods, try blocks), except those
    under `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _owner(name: str, modules: Modules) -> str | None:
    """`name` if it is one of `modules`, else the nearest enclosing one (None: not ours)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _source(importer: str, node: ast.ImportFrom, modules: Modules) -> str:
    """The absolute module an ImportFrom reads from, relative imports resolved."""
    if node.level == 0:
        return node.module or ""
    package = importer if modules[importer].name == "__init__.py" else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def import_graph(modules: Modules) -> dict[str, set[str]]:
    """Module -> the modules of `modules` it imports at run time."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets: set[str | None] = set()
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(_owner(alias.name, modules) for alias in node.names)
                continue
            source = _source(module, node, modules)
            for alias in node.names:
                # `from proxy.config import sections` imports a module; `from proxy.config
                # import load_config` imports from the package itself.
                submodule = f"{source}.{alias.name}"
                targets.add(submodule if submodule in modules else _owner(source, modules))
        graph[module] = {target for target in targets if target is not None and target != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target in path:
                return path[path.index(target):] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle is not None:
                    return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


def layers_drawn(markdown: str) -> list[list[str]]:
    """The rows of the picture under "## Layers" in docs/INTERFACES.md, top row first: each row
    is `label  module · module · ...`; `config/sections` names `proxy.config.sections` and
    `proxy` the package itself."""
    section = ("\n" + markdown).split("\n## Layers", 1)[1]
    picture = section.split("```", 2)[1].splitlines()[1:]  # after the fence's info string
    return [[_dotted(name.strip()) for name in line.split(None, 1)[1].split("·")]
            for line in picture if line.strip()]


def _dotted(name: str) -> str:
    return "proxy" if name == "proxy" else "proxy." + name.rstrip("/").replace("/", ".")


def upward_imports(graph: dict[str, set[str]], rows: list[list[str]]) -> list[str]:
    """Imports that do not go down: to a higher row, or on the same row to the left."""
    place = {module: (row, column) for row, names in enumerate(rows) for column, module in enumerate(names)}
    bad = [f"{module} is in no layer of the picture: add it to the row of the modules it sits with"
           for module in sorted(graph) if module not in place]
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if module in place and target in place and place[target] <= place[module]:
                bad.append(f"{module} imports {target}, which is not below it")
    return bad


def test_the_import_graph_of_proxy_has_no_cycle():
    cycle = find_cycle(import_graph(modules_of(PROXY)))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_import_goes_down_the_layers_of_docs_interfaces():
    rows = layers_drawn(INTERFACES.read_text(encoding="utf-8"))
    assert upward_imports(import_graph(modules_of(PROXY)), rows) == []


def test_the_layer_check_names_an_upward_import_and_an_unplaced_module():
    rows = layers_drawn("## Layers\n```text\ntop     cli · explain\nbottom  model\n```\n")
    assert rows == [["proxy.cli", "proxy.explain"], ["proxy.model"]]
    graph = {"proxy.cli": {"proxy.explain"}, "proxy.explain": {"proxy.cli", "proxy.model"},
             "proxy.model": set(), "proxy.new": set()}
    assert upward_imports(graph, rows) == [
        "proxy.new is in no layer of the picture: add it to the row of the modules it sits with",
        "proxy.explain imports proxy.cli, which is not below it",
    ]


def test_standards_and_model_are_the_bottom_layer():
    graph = import_graph(modules_of(PROXY))
    assert graph["proxy.standards"] == set()
    assert graph["proxy.model"] <= {"proxy.memo", "proxy.standards"}
    assert graph["proxy.memo"] == set()


def test_a_cycle_closed_by_a_function_level_or_relative_import_is_found(tmp_path):
    package = tmp_path / "proxy"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "low.py": "def later():\n    from proxy import high\n    return high\n",
        "high.py": "from . import low\n",
        "sub/__init__.py": "from .deep import thing\n",
        "sub/deep.py": "from ..low import later as thing\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    graph = import_graph(modules_of(package))
    assert graph == {
        "proxy": set(), "proxy.low": {"proxy.high"}, "proxy.high": {"proxy.low"},
        "proxy.sub": {"proxy.sub.deep"}, "proxy.sub.deep": {"proxy.low"},
    }
    assert find_cycle(graph) == ["proxy.high", "proxy.low", "proxy.high"]


def test_an_import_only_for_type_checking_is_not_an_edge(tmp_path):
    package = tmp_path / "proxy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "server.py").write_text("import proxy.protocol\n")
    (package / "protocol.py").write_text(
        "import typing\nif typing.TYPE_CHECKING:\n    from proxy.server import Server\n")
    graph = import_graph(modules_of(package))
    assert graph["proxy.protocol"] == set()
    assert find_cycle(graph) is None


def readme_module_list(markdown: str) -> dict[str, set[str]]:
    """The files the README's "Development" tree names: {"": top-level modules, "config": ...}.
    An entry line is indented two spaces (four under a sub-package); every `name.py` on it counts."""
    block = markdown.split("\n## Development", 1)[1].split("```", 2)[1]
    listed: dict[str, set[str]] = {"": set()}
    package = ""
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        first = line.strip().split(" ", 1)[0]
        if indent == 2 and first.endswith("/"):
            package = first.rstrip("/")
            listed[package] = set()
        elif indent in (2, 4) and first.endswith(".py"):
            if indent == 2:
                package = ""
            listed[package].update(re.findall(r"\b[\w]+\.py\b", line))
    return listed


def test_the_readme_module_list_matches_the_tree():
    listed = readme_module_list((REPO / "README.md").read_text(encoding="utf-8"))
    packages = {"": PROXY, **{path.name: path for path in PROXY.iterdir() if (path / "__init__.py").exists()}}
    assert set(listed) == set(packages)
    for name, directory in packages.items():
        files = {path.name for path in directory.glob("*.py")} - {"__init__.py"}
        assert listed[name] == files, f"proxy/{name}: README lists {sorted(listed[name] - files)} not in the tree, " \
                                      f"misses {sorted(files - listed[name])}"
