"""Make datasets/samples/ from the full files: seeded, stratified row samples in the files' own formats.

    python datasets/make_samples.py [--data-dir DIR] [--out datasets/samples]

--data-dir is the folder with the full files (default $RANKER_DATA_DIR, else <repo>/../shared/data;
`bash scripts/fetch-data.sh` fetches them). Every sampled line is copied byte for byte, in the
file's order, so the same loaders read the samples:

- census_income_kdd/census-income.test.gz: 5,000 of the 99,762 rows, stratified by the two labels
  (income > 50K, never married), gzip-compressed with no name and no time stamp in the header.
- kuairand/kuairand_27k_liked_or_hated.tsv: 5,000 of the 41,828 impressions (header kept),
  stratified by the four binary labels (click, long view, share, comment).
- kuairand/user_features_pure.csv: the header and the rows of exactly the users of that sample.
- kuairand/LICENSE_KuaiRand_CC-BY-SA-4.0.txt: the licence, copied (the sample is CC BY-SA 4.0).

Each stratum gets its share of the rows (largest remainder), its rows drawn with random.Random(SEED).
The same full files give the same samples: the test tests/test_data_files.py re-makes them and
compares. Standard library only. Prints each written file's sha256 (datasets/samples/README.md lists them).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import random
import shutil
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training" / "data"))
from files import data_root  # noqa: E402  (the stdlib-only module alone: no numpy needed)

SEED = 16
CENSUS_ROWS = 5000
KUAIRAND_ROWS = 5000
CENSUS = Path("census_income_kdd") / "census-income.test.gz"
KUAIRAND = Path("kuairand")
LOG, USERS, LICENCE = "kuairand_27k_liked_or_hated.tsv", "user_features_pure.csv", "LICENSE_KuaiRand_CC-BY-SA-4.0.txt"


def stratified(keys: list, n: int, seed: int) -> list[int]:
    """`n` indices of `keys`, each distinct key's share proportional to its count, in the original order."""
    groups: dict = defaultdict(list)
    for index, key in enumerate(keys):
        groups[key].append(index)
    order = sorted(groups)
    exact = {k: n * len(groups[k]) / len(keys) for k in order}
    take = {k: int(exact[k]) for k in order}
    for k in sorted(order, key=lambda k: (-(exact[k] - take[k]), k))[: n - sum(take.values())]:
        take[k] += 1  # largest remainders first, ties by key
    rng = random.Random(seed)
    chosen = [i for k in order for i in rng.sample(groups[k], take[k])]
    return sorted(chosen)


def census_sample(source: Path, target: Path, n: int = CENSUS_ROWS, seed: int = SEED) -> None:
    lines = gzip.decompress(source.read_bytes()).splitlines(keepends=True)
    fields = [line.decode().split(",") for line in lines]
    keys = [(f[-1].strip().startswith("50000+"), f[7].strip() == "Never married") for f in fields]
    rows = b"".join(lines[i] for i in stratified(keys, n, seed))
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as out:
        out.write(rows)


def kuairand_sample(source: Path, target: Path, n: int = KUAIRAND_ROWS, seed: int = SEED) -> None:
    header, *lines = (source / LOG).read_bytes().splitlines(keepends=True)
    names = header.decode().rstrip("\r\n").split("\t")
    columns = [names.index(c) for c in ("is_click", "long_view", "is_forward", "is_comment")]
    fields = [line.decode().rstrip("\r\n").split("\t") for line in lines]
    chosen = stratified([tuple(f[c] for c in columns) for f in fields], n, seed)
    target.mkdir(parents=True, exist_ok=True)
    (target / LOG).write_bytes(header + b"".join(lines[i] for i in chosen))
    users = {fields[i][names.index("user_id")] for i in chosen}
    user_header, *user_lines = (source / USERS).read_bytes().splitlines(keepends=True)
    kept = [line for line in user_lines if line.split(b",", 1)[0].decode() in users]  # user_id: first, unquoted
    (target / USERS).write_bytes(user_header + b"".join(kept))
    shutil.copyfile(source / LICENCE, target / LICENCE)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=None, help="the full files (default: training's data folder)")
    p.add_argument("--out", type=Path, default=REPO / "datasets" / "samples")
    args = p.parse_args(argv)
    root = data_root(args.data_dir)
    census_sample(root / CENSUS, args.out / CENSUS)
    kuairand_sample(root / KUAIRAND, args.out / KUAIRAND)
    for path in sorted(p for p in args.out.rglob("*") if p.is_file() and p.name != "README.md"):
        print(hashlib.sha256(path.read_bytes()).hexdigest(), path.relative_to(args.out).as_posix())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
