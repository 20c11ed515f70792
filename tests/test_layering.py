"""Imports flow one way: clipmoe_demo -> eval_mllm -> llava_integration -> clipmoe_encoder.

Read from the source (AST), not from sys.modules, so that every import counts: module level,
inside functions, under `if TYPE_CHECKING`, relative or absolute.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each package may import only the packages after it.
LAYERS = ("clipmoe_demo", "eval_mllm", "llava_integration", "clipmoe_encoder")


def imported_modules(path: str, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in one file; `module` is the file's own dotted
    name, which resolves relative imports."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    package = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.append((node.lineno, name))
            # `from pkg import sub` may name a sub-module: count it too
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def python_files(package: str, repo: str):
    for directory, _, files in os.walk(os.path.join(repo, package)):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                rel = os.path.relpath(path, repo)[: -len(".py")]
                yield path, rel.replace(os.sep, ".").removesuffix(".__init__")


def violations(package: str, repo: str = REPO) -> list[str]:
    forbidden = LAYERS[: LAYERS.index(package)]  # the layers above this one
    out = []
    for path, module in python_files(package, repo):
        for line, name in imported_modules(path, module):
            if name.split(".")[0] in forbidden:
                out.append(f"{os.path.relpath(path, repo)}:{line} imports {name}")
    return sorted(out)


@pytest.mark.parametrize("package", LAYERS)
def test_imports_flow_one_way(package):
    assert any(True for _ in python_files(package, REPO)), f"no Python files in {package}/"
    assert violations(package) == []


def test_every_import_form_is_seen(tmp_path):
    """The checker sees module-level, function-level, conditional and `from x import y` imports and
    resolves relative ones: a product module written like the old eval_mllm/__main__.py (`from
    .chain import cli`, where chain imported the demo inside a function) is reported, line by line."""
    package = tmp_path / "eval_mllm"
    (package / "chain").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "chain" / "__init__.py").write_text(
        "from .. import questions\n"          # own package: fine
        "from clipmoe_encoder import upcycle\n"  # a lower layer: fine
        "def run():\n"
        "    from clipmoe_demo.encoder.run import run_demo\n"
        "    return run_demo\n")
    (package / "__main__.py").write_text(
        "import os\n"
        "from .chain import run\n"
        "if False:\n"
        "    import clipmoe_demo.world as w\n")
    assert violations("eval_mllm", str(tmp_path)) == [
        "eval_mllm/__main__.py:4 imports clipmoe_demo.world",
        "eval_mllm/chain/__init__.py:4 imports clipmoe_demo.encoder.run",
        "eval_mllm/chain/__init__.py:4 imports clipmoe_demo.encoder.run.run_demo",
    ]
    assert violations("clipmoe_encoder", str(tmp_path)) == []  # no files there: nothing to report


def test_relative_imports_resolve_to_their_package(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    path = tmp_path / "a" / "b" / "c.py"
    path.write_text("from .. import x\nfrom .d import e\nfrom . import f\n")
    assert imported_modules(str(path), "a.b.c") == [
        (1, "a"), (1, "a.x"), (2, "a.b.d"), (2, "a.b.d.e"), (3, "a.b"), (3, "a.b.f")]
    init = tmp_path / "a" / "b" / "__init__.py"
    init.write_text("from .d import e\n")
    assert imported_modules(str(init), "a.b") == [(1, "a.b.d"), (1, "a.b.d.e")]
