"""The deployment files are never run here (no Docker engine), so check them the ways we can."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (Debian package) not installed")
def test_compose_file_is_valid():
    out = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "ranker:" in out.stdout and "redis:" in out.stdout


def test_every_ranker_variable_in_the_deployment_files_is_a_setting():
    fields = {f"RANKER_{name.upper()}" for name in Settings.model_fields}
    text = (ROOT / "docker-compose.yml").read_text() + (ROOT / "Dockerfile").read_text()
    used = set(re.findall(r"\bRANKER_[A-Z_]+\b", text))
    assert used and used <= fields, used - fields


def test_the_image_runs_as_a_non_root_user_and_installs_one_onnxruntime_build():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER ranker" in dockerfile
    assert 'pip install ".[${ORT}]"' in dockerfile and "torch" not in dockerfile.split("pip install")[1]
