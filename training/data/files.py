"""The real data sets' files: where training reads them, where they come from, their sha256.

The full files (census 3.3 MB, KuaiRand 7.8 MB) stay outside git. This module downloads them from
their public sources into the folder training reads and checks every file's sha256:

    bash scripts/fetch-data.sh [--data-dir DIR] [--check]

The folder is --data-dir, else $RANKER_DATA_DIR, else <repo>/../shared/data (`data_root`, the
same rule `ranker-train --data-dir` and the loaders follow). Files already there with the right
sum are kept; a download whose sum differs is deleted and reported (exit 1); `--check` downloads
nothing and only compares the files present against the sums below.

Small samples of both data sets, in the same formats, are committed in datasets/samples/ (its
README names the sources, the licences and every sum; datasets/make_samples.py made them), so
the tests and a first try of the loaders need no download.

Standard library only: scripts/fetch-data.sh runs this file with any python3, before a venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "RANKER_DATA_DIR"
REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "datasets" / "samples"  # the committed samples, laid out like the data folder
FETCH_COMMAND = "bash scripts/fetch-data.sh"


def data_root(override: str | Path | None = None) -> Path:
    """Where the full data sets live: the flag, else $RANKER_DATA_DIR, else <repo>/../shared/data."""
    if override:
        return Path(override)
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    return REPO.parent / "shared" / "data"


@dataclass(frozen=True)
class FullFile:
    path: str  # inside the data folder
    sha256: str
    url: str  # where it is downloaded from
    member: str | None = None  # the url is a .tar.gz: the archive member whose name ends so
    source: str = ""  # for people: what the url is


KERAS_MMOE = "https://raw.githubusercontent.com/drawbridge/keras-mmoe/5532ffb3ed6bccf4a0eae9d189fa0d661357425f"
KUAIRAND_LOG = ("https://raw.githubusercontent.com/alessandrosocc/predict_explicit_negative_feedback_kuairand/"
                "959232d6dd3c66f45e802436c2914e9584139eac/processed_data/processed_standard_kcore_15.csv")  # fmt: skip
# 194 MB; the KuaiRand README gives its md5 as 0820331067a3784d9691136f772b35a7 (the files' sha256 are checked here)
KUAIRAND_PURE = "https://zenodo.org/records/10439422/files/KuaiRand-Pure.tar.gz"
KUAIRAND_REPO = "https://raw.githubusercontent.com/chongminggao/KuaiRand/f8dbf6678b3c9594050e3e813aeff0c942260ec4"

FULL_FILES = [
    FullFile("census_income_kdd/census-income.test.gz",
             "5ac4cacd3ca9f1ecb10de1a0a41e4ac68fdc419e3fec190f5c0c6cc03b2ea659",
             f"{KERAS_MMOE}/data/census-income.test.gz",
             source="UCI Census-Income (KDD) test split, as mirrored in github.com/drawbridge/keras-mmoe"),
    FullFile("kuairand/kuairand_27k_liked_or_hated.tsv",
             "321128c4543d3e658a1fa9788edd4049295b0d1ccf4469154326fb7769556e0a",
             KUAIRAND_LOG,
             source="KuaiRand-27K rows with a like or hate, github.com/alessandrosocc/"
                    "predict_explicit_negative_feedback_kuairand at 959232d6 (named .csv there, TAB-separated)"),
    FullFile("kuairand/user_features_pure.csv",
             "dc729a656301b4c6d07f713fe41d05ec9bfaab670b90e531c70037caf033c011",
             KUAIRAND_PURE, member="/user_features_pure.csv",
             source="KuaiRand-Pure.tar.gz on Zenodo (record 10439422)"),
    FullFile("kuairand/video_features_basic_pure.csv",
             "a6f7ee02684c5777422306cdc416e170302288aa89aca9dfea995edbd625bcc2",
             KUAIRAND_PURE, member="/video_features_basic_pure.csv",
             source="KuaiRand-Pure.tar.gz on Zenodo (record 10439422)"),
    FullFile("kuairand/LICENSE_KuaiRand_CC-BY-SA-4.0.txt",
             "187442db4df3afd21f2f0525739fd4beac28a62daaba3ee8d3533f60e7c33ec7",
             f"{KUAIRAND_REPO}/LICENSE",
             source="the KuaiRand licence (CC BY-SA 4.0), github.com/chongminggao/KuaiRand"),
]  # fmt: skip


def sha256(path: Path) -> str:
    # contract.modelspec.sha256_file's twin: this file runs as a script on the standard library alone,
    # before the venv (and pydantic, which contract needs) exists.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def missing_message(path: Path, data_set: str) -> str:
    """What a loader says when a full file is not there: where it looked and the three ways out."""
    return (f"{path} not found. The full data sets are not in the repository: download them with "
            f"`{FETCH_COMMAND} [--data-dir DIR]` (default ${DATA_DIR_ENV}, else <repo>/../shared/data), point "
            f"--data-dir or ${DATA_DIR_ENV} at a folder that has them, or use the committed sample in datasets/samples/ "
            f"(ranker-train --set data.{data_set}.sample=true; python -m experiments --quick; docs/data.md)")  # fmt: skip


def check(root: Path, files: Iterable[FullFile] = FULL_FILES) -> list[tuple[FullFile, str]]:
    """Each file's state in `root`: "ok", "missing" or "sha256 <actual> != <expected>"."""
    states = []
    for item in files:
        path = root / item.path
        if not path.is_file():
            states.append((item, "missing"))
            continue
        actual = sha256(path)
        states.append((item, "ok" if actual == item.sha256 else f"sha256 {actual}, expected {item.sha256}"))
    return states


Opener = Callable[[str], "object"]  # url -> a readable binary file object (urllib.request.urlopen)


def _download(url: str, targets: dict[str | None, Path], opener: Opener) -> None:
    """The url's bytes into targets[None], or, for a .tar.gz, each member whose name ends in a key of
    `targets` into its path (the archive is streamed once, never stored)."""
    with opener(url) as response:
        if None in targets:
            with open(targets[None], "wb") as out:
                shutil.copyfileobj(response, out)
            return
        wanted = dict(targets)
        with tarfile.open(fileobj=response, mode="r|gz") as archive:
            for entry in archive:
                member = next((m for m in wanted if entry.isfile() and ("/" + entry.name).endswith(m)), None)
                if member is not None:
                    with archive.extractfile(entry) as data, open(wanted.pop(member), "wb") as out:
                        shutil.copyfileobj(data, out)
                if not wanted:
                    return
    raise FileNotFoundError(f"{url} has no member ending in {', '.join(map(str, wanted))}")


def fetch(root: Path, files: Iterable[FullFile] = FULL_FILES, opener: Opener = urllib.request.urlopen,
          log: Callable[[str], None] = print) -> bool:  # fmt: skip
    """Download every file `root` lacks, check every sum; True when all files are there and right.

    A file already present is never overwritten: with the wrong sum it is reported (delete it to
    download it again). A download lands in a temporary file beside its target and is renamed only
    when its sum is right; otherwise it is deleted and reported. Files from one archive share one
    download.
    """
    good = True
    wanted: dict[str, list[FullFile]] = {}  # url -> the missing files it holds
    for item, state in check(root, files):
        path = root / item.path
        if state == "ok":
            log(f"ok       {path}")
        elif state == "missing":
            wanted.setdefault(item.url, []).append(item)
        else:
            log(f"MISMATCH {path}: {state} (delete it to download it again)")
            good = False
    for url, items in wanted.items():
        names = ", ".join(str(root / i.path) for i in items)
        log(f"fetching {names} from {url}")
        temporaries: dict[FullFile, Path] = {}
        try:
            for item in items:
                path = root / item.path
                path.parent.mkdir(parents=True, exist_ok=True)
                handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
                os.close(handle)
                temporaries[item] = Path(name)
            _download(url, {i.member: t for i, t in temporaries.items()}, opener)
            for item, temporary in temporaries.items():
                actual = sha256(temporary)
                if actual == item.sha256:
                    os.replace(temporary, root / item.path)
                    log(f"ok       {root / item.path}")
                else:
                    log(f"MISMATCH {root / item.path}: the download's sha256 is {actual}, expected {item.sha256}; "
                        f"not kept")  # fmt: skip
                    good = False
        except (OSError, tarfile.TarError, EOFError) as exc:  # no network, HTTP error, a bad archive, no room
            log(f"FAILED   {names}: {exc}")
            good = False
        finally:
            for temporary in temporaries.values():
                temporary.unlink(missing_ok=True)
    return good


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=FETCH_COMMAND, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=None,
                   help=f"where the files go (default ${DATA_DIR_ENV}, else <repo>/../shared/data)")  # fmt: skip
    p.add_argument("--check", action="store_true", help="download nothing: compare the files present with their sums")
    args = p.parse_args(argv)
    root = data_root(args.data_dir)
    if args.check:
        states = check(root)
        for item, state in states:
            label = {"ok": "ok", "missing": "MISSING"}.get(state, "MISMATCH")
            print(f"{label:8} {root / item.path}" + ("" if label != "MISMATCH" else f": {state}"))
        good = all(state == "ok" for _, state in states)
    else:
        good = fetch(root)
    print(f"{root}: {'every file present, every sha256 right' if good else 'incomplete (see above)'}",
          file=sys.stdout if good else sys.stderr)  # fmt: skip
    return 0 if good else 1


if __name__ == "__main__":
    raise SystemExit(main())
