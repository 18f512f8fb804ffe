"""The reference pages in docs/ against the code they describe: every metric, every error code,
every link; and nothing in the repository points at the shared folder beside it except the
optional full-data default."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from service.api.errors import STATUS
from service.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md", ROOT / "datasets" / "samples" / "README.md"]


def table_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("|---")]  # fmt: skip


def test_every_metric_is_documented_with_its_type_and_labels():
    documented = {row[0].strip("`"): row for row in table_rows((DOCS / "monitoring.md").read_text())
                  if row[0].startswith("`ranker_")}  # fmt: skip
    declared = {}  # exposed name -> (type, label names), from the wrappers Metrics() declares
    for wrapper in vars(Metrics()).values():
        if isinstance(wrapper, MetricWrapperBase):
            name = wrapper._name + ("_total" if wrapper._type == "counter" else "")
            declared[name] = (wrapper._type, set(wrapper._labelnames))
    assert len(declared) >= 15 and set(documented) == set(declared)
    for name, (kind, labels) in declared.items():
        row = documented[name]
        assert row[1] == kind and {x.strip() for x in row[2].split(",") if x.strip()} == labels, name


def test_every_error_code_the_service_raises_is_in_the_api_reference_with_its_status():
    raised = set()
    for path in (ROOT / "service").rglob("*.py"):
        text = path.read_text()
        raised |= set(re.findall(r"ApiError\(\s*(\d{3}),\s*\"([a-z_]+)\"", text))
        raised |= set(re.findall(r"error_response\(\s*(\d{3}),\s*\"([a-z_]+)\"", text))
        # domain problems (service.problems), at the status service.api.errors gives their kind
        raised |= {(str(status), code) for kind, status in STATUS.items()
                   for code in re.findall(rf"\b{kind.__name__}\(\s*\"([a-z_]+)\"", text)}  # fmt: skip
    raised |= {("400", "invalid_json"), ("404", "not_found"), ("405", "method_not_allowed")}  # service/api/errors.py's map
    assert len(raised) > 30
    documented = set()
    for row in table_rows((DOCS / "api.md").read_text()):
        if row[0].isdigit():
            documented |= {(row[0], code) for code in re.findall(r"`([a-z_]+)`", row[1])}
    assert raised <= documented, sorted(raised - documented)


LINK = re.compile(r"\]\(([^)#\s]*)(#[^)]*)?\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading(page):
    for target, anchor in LINK.findall(page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        linked = page.parent / target if target else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor[1:] in anchors(linked), f"{page.name}: {target}{anchor}"


def test_only_the_full_data_default_points_beside_the_repository():
    """`<repo>/../shared/data` is the optional default folder of the full data files; nothing else
    (no contract, no notes, no tool) may live beside the repository."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    found = []
    for relative in listed.stdout.decode().split("\0"):
        path = ROOT / relative
        if not relative or not path.is_file():
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):  # binary files
            continue
        found += [f"{relative}: {line.strip()}" for line in text.splitlines() if re.search(r"\.\./shared(?!/data)", line)]
    assert not found, found


def test_the_readme_layout_names_every_folder_and_module():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    files = [f for f in listed.stdout.decode().split("\0") if f]
    folders = {f.split("/", 1)[0] for f in files if "/" in f and not f.startswith(".")}
    assert all(f"{folder}/" in layout for folder in folders), sorted(f for f in folders if f"{f}/" not in layout)
    packages = {f.split("/")[1] for f in files if f.startswith(("service/", "training/")) and f.endswith("/__init__.py")
                and f.count("/") == 2}  # fmt: skip
    assert all(f"{p}/" in layout for p in packages), sorted(p for p in packages if f"{p}/" not in layout)
    modules = {Path(f).stem for f in files if f.endswith(".py") and f.count("/") <= 2
               and f.split("/")[0] in ("contract", "service", "training") and "/routes/" not in f
               and not f.endswith(("__init__.py", "__main__.py"))}  # fmt: skip
    assert all(re.search(rf"\b{m}\b", layout) for m in modules), sorted(m for m in modules if not re.search(rf"\b{m}\b", layout))
    assert layout.count("bench/") == 1  # listed once
