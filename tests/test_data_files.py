"""The data files: the committed samples' sums and licence, and scripts/fetch-data.sh (training/data/files.py).

This machine has no internet, so the downloads are tested against file:// URLs of local files
(urllib reads those the same way); the checksum step runs against the real full files where they
are (tests marked full_data) and against corrupted copies.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from training.data import SAMPLES, data_root
from training.data.files import FULL_FILES, FullFile, check, fetch, sha256

ROOT = Path(__file__).resolve().parents[1]
FETCH = ["bash", str(ROOT / "scripts" / "fetch-data.sh")]


def readme_sums() -> tuple[dict[str, str], dict[str, str]]:
    """The samples README's two sha256 blocks: the samples', then the full files'."""
    blocks, inside = [], False
    for line in (SAMPLES / "README.md").read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
            if inside:
                blocks.append([])
        elif inside:
            blocks[-1].append(line)
    sums = [dict(reversed(line.split("  ", 1)) for line in block) for block in blocks
            if block and all(re.fullmatch(r"[0-9a-f]{64}  \S+", line) for line in block)]  # fmt: skip
    assert len(sums) == 2
    return sums[0], sums[1]


def test_every_sample_file_is_listed_with_its_sha256_and_the_kuairand_licence_is_beside_it():
    samples, full = readme_sums()
    on_disk = {p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*") if p.is_file() and p.name != "README.md"}
    assert set(samples) == on_disk
    for name, digest in samples.items():
        assert sha256(SAMPLES / name) == digest, name
    assert full == {f.path: f.sha256 for f in FULL_FILES}  # the README and the fetch script agree
    licence = (SAMPLES / "kuairand" / "LICENSE_KuaiRand_CC-BY-SA-4.0.txt").read_text()
    assert "Attribution-ShareAlike 4.0 International" in licence
    assert samples["kuairand/LICENSE_KuaiRand_CC-BY-SA-4.0.txt"] == full["kuairand/LICENSE_KuaiRand_CC-BY-SA-4.0.txt"]


def test_the_census_sample_is_the_files_format_with_both_labels_positive():
    lines = (
        gzip.decompress((SAMPLES / "census_income_kdd" / "census-income.test.gz").read_bytes()).decode().splitlines()
    )
    assert len(lines) == 5000 and all(len(line.split(", ")) == 42 for line in lines)
    assert {line.rsplit(", ", 1)[1] for line in lines} == {"50000+.", "- 50000."}
    assert sum(line.split(", ")[7] == "Never married" for line in lines) == 2162


@pytest.mark.full_data
def test_fetch_check_passes_on_the_full_files():
    run = subprocess.run([*FETCH, "--check", "--data-dir", str(data_root())], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("ok ") == len(FULL_FILES) and "every sha256 right" in run.stdout


@pytest.mark.full_data
def test_the_samples_are_remade_from_the_full_files(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "datasets" / "make_samples.py"), "--data-dir", str(data_root()),
                    "--out", str(tmp_path)], check=True, capture_output=True)  # fmt: skip
    for path in SAMPLES.rglob("*"):
        if path.is_file() and path.name != "README.md":
            made = tmp_path / path.relative_to(SAMPLES)
            if path.suffix == ".gz":  # the lines, not the compressed bytes (those depend on zlib)
                assert gzip.decompress(made.read_bytes()) == gzip.decompress(path.read_bytes())
            else:
                assert made.read_bytes() == path.read_bytes(), path


def test_fetch_check_names_a_file_whose_sum_differs_and_fails(tmp_path):
    target = tmp_path / FULL_FILES[0].path
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the census file")
    run = subprocess.run([*FETCH, "--check", "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 1
    assert f"MISMATCH {target}: sha256 {sha256(target)}, expected {FULL_FILES[0].sha256}" in run.stdout
    assert run.stdout.count("MISSING ") == len(FULL_FILES) - 1 and "incomplete" in run.stderr
    assert target.read_bytes() == b"not the census file"  # --check changes nothing


def local(path: Path, member: str | None = None, digest: str | None = None) -> FullFile:
    return FullFile(path.name if member is None else member.strip("/"), digest or sha256(path), path.as_uri(), member)


def test_fetch_downloads_what_is_missing_checks_it_and_keeps_what_is_there(tmp_path):
    files = [
        local(SAMPLES / "kuairand" / "user_features_pure.csv"),
        local(SAMPLES / "kuairand" / "kuairand_27k_liked_or_hated.tsv"),
    ]
    lines: list[str] = []
    assert fetch(tmp_path / "data", files, log=lines.append)
    for item in files:
        assert sha256(tmp_path / "data" / item.path) == item.sha256
    assert [state for _, state in check(tmp_path / "data", files)] == ["ok", "ok"]

    def offline(url):
        raise AssertionError(f"downloaded {url} again")

    assert fetch(tmp_path / "data", files, opener=offline, log=lines.append)  # all there: nothing fetched
    assert not list((tmp_path / "data").glob(".*.part"))


def test_a_download_with_the_wrong_sum_is_not_kept_and_a_wrong_file_is_not_overwritten(tmp_path):
    source = SAMPLES / "kuairand" / "user_features_pure.csv"
    wrong = local(source, digest="0" * 64)
    lines: list[str] = []
    assert not fetch(tmp_path, [wrong], log=lines.append)
    assert not (tmp_path / wrong.path).exists() and not list(tmp_path.glob(".*"))  # no partial file left
    assert any(line.startswith("MISMATCH") and sha256(source) in line and "not kept" in line for line in lines)

    right = local(source)
    (tmp_path / right.path).write_bytes(b"edited by hand")
    lines.clear()
    assert not fetch(tmp_path, [right], log=lines.append)
    assert (tmp_path / right.path).read_bytes() == b"edited by hand"
    assert "delete it to download it again" in lines[0]


def test_members_of_one_archive_come_from_one_download(tmp_path):
    archive = tmp_path / "Pure.tar.gz"
    contents = {"KuaiRand-Pure/data/user_features_pure.csv": b"user_id\n1\n", "KuaiRand-Pure/data/other.csv": b"x\n",
                "KuaiRand-Pure/data/video_features_basic_pure.csv": b"video_id\n7\n"}  # fmt: skip
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    files = [FullFile(f"kuairand/{n}", hashlib.sha256(contents[f"KuaiRand-Pure/data/{n}"]).hexdigest(),
                      archive.as_uri(), member=f"/{n}") for n in ("user_features_pure.csv", "video_features_basic_pure.csv")]  # fmt: skip
    opened = []

    def opener(url):
        opened.append(url)
        return urllib.request.urlopen(url)

    assert fetch(tmp_path / "data", files, opener=opener, log=lambda _: None)
    assert opened == [archive.as_uri()]
    assert (tmp_path / "data" / "kuairand" / "video_features_basic_pure.csv").read_bytes() == b"video_id\n7\n"
    assert not (tmp_path / "data" / "kuairand" / "other.csv").exists()


def test_no_network_is_a_reported_failure_not_a_traceback(tmp_path):
    def offline(url):
        raise urllib.error.URLError("Name or service not known")

    lines: list[str] = []
    assert not fetch(tmp_path, FULL_FILES, opener=offline, log=lines.append)
    assert sum(line.startswith("FAILED") for line in lines) == len({f.url for f in FULL_FILES})
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
