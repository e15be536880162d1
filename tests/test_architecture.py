"""The build package's rooms and the one direction between them (docs/architecture.md), read from the
source: cli/demo -> export | server -> repository -> model -> triton_models.

- `triton_models` is copied into every repository and runs in Triton's stub: it imports nothing of
  the package (its modules import each other by bare name, as they sit side by side there);
- `model` knows nothing of Triton: it may import `triton_models` only;
- `repository` may import `model` and `triton_models`;
- `export` and `server` may import what is below them, never each other (`server` also never
  `model`: torch stays off the serving path);
- an import inside a function is there to keep a heavy import off a light path, and says so in a
  comment on its line or above its block of imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "build" / "emotion_build"
ALLOWED: dict[str, set[str]] = {
    "triton_models": set(),
    "model": {"triton_models"},
    "repository": {"model", "triton_models"},
    "export": {"model", "repository", "triton_models"},
    "server": {"repository", "triton_models"},
    "": {"model", "repository", "export", "server", "triton_models"},
}
"""Each room ("": the package's top, cli, demo, __main__) and the rooms it may import."""


def room(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else ""


def imported_rooms(path: Path) -> list[tuple[int, str, bool]]:
    """(line, room imported, inside a function) for each import of the package in `path`."""
    tree = ast.parse(path.read_text())
    package_parts = list(path.relative_to(PACKAGE).parts[:-1])
    found = []
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inside = {id(child) for function in functions for child in ast.walk(function) if child is not function}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
                if not node.module:
                    target = [*base, node.names[0].name]
            elif node.module and node.module.startswith("emotion_build"):
                target = node.module.split(".")[1:]
            else:
                continue
            target_room = target[0] if len(target) > 1 or (target and (PACKAGE / target[0]).is_dir()) else ""
            found.append((node.lineno, target_room, id(node) in inside))
    return found


def test_every_room_imports_only_the_rooms_below_it() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = room(path)
        for line, target, _ in imported_rooms(path):
            if target != own and target not in ALLOWED[own]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {target or 'the top'}")
    assert not wrong, "\n".join(wrong)


def test_imports_inside_functions_say_why() -> None:
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for line, _, nested in imported_rooms(path):
            text = lines[line - 1]
            above = line - 2
            while above >= 0 and lines[above].strip().startswith(("from ", "import ")):
                above -= 1  # a block of deferred imports shares one comment
            if nested and "#" not in text and not lines[above].strip().startswith("#"):
                unexplained.append(f"{path.relative_to(PACKAGE)}:{line}: {text.strip()}")
    assert not unexplained, "\n".join(unexplained)


def test_the_runner_side_imports_nothing_of_the_package() -> None:
    for path in sorted((PACKAGE / "triton_models").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0 and not (node.module or "").startswith("emotion_build"), path.name


def test_the_serving_path_loads_neither_torch_nor_transformers() -> None:
    import subprocess
    import sys

    code = "import sys, emotion_build.cli; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
