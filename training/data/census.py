"""UCI Census-Income (KDD) as the MMoE and PLE papers use it: two binary tasks on one person.

Tasks: income > 50K (the label column) and marital status "Never married" (column 7, removed from
the inputs). Column 24 (instance weight) is dropped as in the papers. Only the test file
(census-income.test, 99,762 rows) could be obtained (docs/data.md: source, licence, sha256), so it
is split 60 / 20 / 20 into train / validation / test with a fixed seed, stratified by both labels.
The full file is read from the data folder (`data_root`; `bash scripts/fetch-data.sh` downloads
it); `sample=True` reads the committed 5,000-row sample in datasets/samples/ instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from contract.modelspec import FeatureSpec, TaskSpec
from training.data import SAMPLES, Dataset, data_root
from training.data.files import missing_message

FILE = Path("census_income_kdd") / "census-income.test.gz"
COLUMNS = [
    "age", "class_of_worker", "industry_code", "occupation_code", "education", "wage_per_hour",
    "enrolled_in_edu_last_wk", "marital_status", "major_industry", "major_occupation", "race",
    "hispanic_origin", "sex", "labor_union", "unemployment_reason", "employment_status",
    "capital_gains", "capital_losses", "dividends", "tax_filer_status", "previous_region",
    "previous_state", "household_detail", "household_summary", "instance_weight",
    "migration_msa", "migration_region", "migration_within_region", "same_house_1y",
    "migration_sunbelt", "persons_worked_for_employer", "family_under_18", "father_birth_country",
    "mother_birth_country", "birth_country", "citizenship", "self_employed",
    "veterans_questionnaire", "veterans_benefits", "weeks_worked", "year", "income",
]  # fmt: skip
DENSE = {  # name -> log1p (money is heavy-tailed)
    "age": False, "wage_per_hour": True, "capital_gains": True, "capital_losses": True,
    "dividends": True, "persons_worked_for_employer": False, "weeks_worked": False,
}  # fmt: skip
DROPPED = {"marital_status", "instance_weight", "income"}
TASKS = [
    TaskSpec(name="income", kind="binary", label="income above 50,000 USD", output="income"),
    TaskSpec(name="never_married", kind="binary", label="marital status is 'Never married'", output="never_married"),
]
SPLIT_SEED = 2020  # documented with every figure (bench/results/census_ple.json)


def read(path: Path | None = None, nrows: int | None = None, sample: bool = False) -> pd.DataFrame:
    if not isinstance(sample, bool):
        raise ValueError(f"data.census.sample={sample!r}: true or false")
    path = SAMPLES / FILE if sample else path or data_root() / FILE
    if not path.is_file():
        raise FileNotFoundError(missing_message(path, "census"))
    frame = pd.read_csv(path, header=None, names=COLUMNS, skipinitialspace=True, keep_default_na=False,
                        dtype=str, nrows=nrows)  # fmt: skip
    return frame.mask(frame == "?")  # '?' marks a missing value


def load(path: Path | None = None, nrows: int | None = None, sample: bool = False) -> Dataset:
    """The census file (or its first `nrows`; or the committed sample) as a two-task data set with a
    stratified split."""
    frame = read(path, nrows, sample)
    features, columns = [], {}
    for name in COLUMNS:
        if name in DROPPED:
            continue
        if name in DENSE:
            values = pd.to_numeric(frame[name]).to_numpy(np.float64)  # NaN (missing) -> default
            features.append(FeatureSpec(name=name, kind="dense", source="user", default=0.0,
                                        log1p=DENSE[name], clip_min=0.0))  # fmt: skip
            columns[name] = values
        else:
            values = frame[name].to_numpy(object)
            values = np.where(pd.isna(values), None, values)  # missing -> the schema's default id 0
            vocabulary = sorted({v for v in values if v is not None})
            features.append(FeatureSpec(name=name, kind="sparse", source="user", vocabulary=vocabulary))
            columns[name] = values
    labels = np.stack([frame["income"].str.startswith("50000+").to_numpy(),
                       (frame["marital_status"] == "Never married").to_numpy()], axis=1)  # fmt: skip
    return Dataset(
        name="census",
        description=(f"UCI Census-Income (KDD) {FILE.name}{' (the repository sample)' if sample else ''} "
                     f"({len(frame)} rows): income > 50K and never married; "
                     f"stratified 60/20/20 split"),  # fmt: skip
        features=features,
        tasks=TASKS,
        columns=columns,
        labels=labels.astype(np.float32),
        masks=np.ones_like(labels, dtype=bool),
        seed=SPLIT_SEED,
        default_weights={"income": 1.0, "never_married": 1.0},
        split_fractions=(0.6, 0.2),
        stratify=True,
    )
