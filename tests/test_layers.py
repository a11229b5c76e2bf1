"""The architecture's arrows point one way (docs/ARCHITECTURE.md): checked on every module's imports.

main.py -> applications/ -> engine/ -> dataloader/ models/ criterions/ optim/ -> utils/
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("applications", "engine", "serving", "dataloader", "models", "criterions", "optim", "utils")
# what each package may import from the project (besides itself and config.py, the typed config)
ALLOWED = {
    "applications": {"engine", "serving", "dataloader", "models", "criterions", "optim", "utils"},
    "engine": {"dataloader", "models", "criterions", "optim", "utils"},
    "serving": {"utils"},  # the exported file only: dataloader/preprocess.py is loaded by its path
    "dataloader": {"utils"},
    "models": {"utils"},
    "criterions": {"utils"},
    "optim": {"utils", "models"},
    "utils": set(),
}


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import of a project module in ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = path.relative_to(REPO).parts[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = f"{package}.{node.module or ''}" if node.level else (node.module or "")
            found.append((node.lineno, module))
    roots = set(PACKAGES) | {"main", "config", "benchmarks", "demos"}
    return [(line, name) for line, name in found if name.split(".")[0] in roots]


def modules_of(package: str) -> list[Path]:
    return sorted((REPO / package).glob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_layers_import_downwards_only(package: str) -> None:
    wrong = []
    for path in modules_of(package):
        for line, name in project_imports(path):
            root = name.split(".")[0]
            if root not in (package, "config") and root not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_no_application_imports_another() -> None:
    wrong = []
    for path in modules_of("applications"):
        for line, name in project_imports(path):
            if name.startswith("applications.") and name != f"applications.{path.stem}":
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_every_application_has_check_and_run() -> None:
    """main.py calls check(cfg) then run(cfg, explicit) on the chosen application, from its table."""
    import importlib

    import main

    for job, module in main.APPLICATIONS.items():
        application = importlib.import_module(module)
        assert callable(getattr(application, "check", None)) and callable(getattr(application, "run", None)), module
    listed = set(main.APPLICATIONS.values())
    present = {f"applications.{p.stem}" for p in modules_of("applications") if p.stem != "__init__"}
    assert listed == present, f"not dispatched: {present - listed}; missing: {listed - present}"


def test_only_utils_distributed_touches_torch_distributed() -> None:
    wrong = []
    for package in PACKAGES + ("benchmarks", "demos"):
        for path in modules_of(package):
            if path == REPO / "utils" / "distributed.py":
                continue
            text = path.read_text()
            if "torch.distributed" in text.replace("# torch.distributed", ""):
                tree = ast.parse(text)
                for node in ast.walk(tree):
                    names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                             [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                    if any(n.startswith("torch.distributed") for n in names):
                        wrong.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not wrong, wrong


def test_the_checkpoint_format_has_one_owner() -> None:
    """Only utils/checkpoint.py calls torch.save / torch.load on checkpoints; everything else asks it.
    models/pretrained.py reads weight files of any origin (timm, torchvision, ours) for --pretrained."""
    owners = {REPO / "utils" / "checkpoint.py", REPO / "models" / "pretrained.py"}
    wrong = []
    for package in PACKAGES + ("benchmarks",):
        for path in modules_of(package):
            if path in owners:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if "torch.save(" in line or "torch.load(" in line:
                    wrong.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not wrong, "\n".join(wrong)
