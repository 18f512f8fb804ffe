"""The package boundaries the layout promises: the contract stands alone, training never imports the server."""

import subprocess
import sys
from pathlib import Path

import pytest


def imported_after(statement: str) -> set[str]:
    """Top-level packages loaded by `statement` in a fresh interpreter."""
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_contract_imports_neither_side_nor_their_engines():
    loaded = imported_after("import contract.modelspec, contract.features, contract.scoring")
    assert not loaded & {"service", "training", "torch", "onnxruntime", "redis", "fastapi", "prometheus_client"}


@pytest.mark.parametrize("module", ["training.cli", "training.train", "training.export", "training.data.stream",
                                    "training.data.census", "training.data.kuairand", "training.models",
                                    "training.data.logsink", "training.data.logjoin", "training.loop"])  # fmt: skip
def test_training_does_not_import_the_service(module):
    assert "service" not in imported_after(f"import {module}")


def test_the_request_schema_does_not_pull_in_the_engines():
    loaded = imported_after("import service.schemas")
    assert not loaded & {"onnxruntime", "redis", "prometheus_client", "torch"}


def test_the_package_metadata_builds_without_deprecation_warnings(tmp_path):
    """pip install -e . printed setuptools' "project.license as a TOML table is deprecated" three times."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = f"import setuptools.build_meta as b; print(b.prepare_metadata_for_build_wheel({str(tmp_path)!r}))"
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert "deprecated" not in (out.stdout + out.stderr).lower(), out.stderr[-2000:]
    metadata = (tmp_path / out.stdout.split()[-1] / "METADATA").read_text()
    assert "License-Expression: MIT" in metadata.splitlines()


SERVICE = Path(__file__).resolve().parents[1] / "service"
# The subsystems below HTTP: ranking, the model lifecycle, the feature store; and the exceptions they raise.
DOMAIN = sorted(str(f.relative_to(SERVICE)) for sub in ("ranking", "lifecycle", "features") for f in (SERVICE / sub).glob("*.py"))
DOMAIN.append("problems.py")
HTTP = ("fastapi", "starlette", "service.api")


def test_the_service_is_split_into_its_subsystems():
    assert {p.name for p in SERVICE.iterdir() if (p / "__init__.py").exists()} >= {
        "api", "ranking", "lifecycle", "features", "observability"}
    assert "lifecycle/registry.py" in DOMAIN and "ranking/ranker.py" in DOMAIN


@pytest.mark.parametrize("module", DOMAIN)
def test_the_domain_says_what_went_wrong_without_http(module):
    """Model lifecycle, ranking, candidates, the KServe shim and the feature store raise
    service.problems; only service.api.errors turns them into statuses (one table)."""
    import ast

    tree = ast.parse((SERVICE / module).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert not [n for n in names if n.startswith(HTTP)], names
