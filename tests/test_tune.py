"""ranker-tune: a tiny study end to end, resuming after Ctrl-C, two workers on one PostgreSQL study."""

import contextlib
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

from tests.conftest import wait_until
from training import config as run_config
from training.baselines import Splits
from training.config import TRAIN_SEARCH
from training.data import videolog
from training.search_space import Choice, Float

BIN = Path(sys.executable).parent
TINY = ["--data", "videolog", "--set", "data.videolog.n_impressions=2000", "--set", "data.videolog.n_users=100",
        "--set", "data.videolog.n_videos=150", "--set", "train.epochs=2", "--threads", "1", "--no-progress"]  # fmt: skip


def tune(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """ranker-tune in `cwd` (its default study and config files go to cwd/tuning/)."""
    return subprocess.run([BIN / "ranker-tune", *TINY, *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          **kwargs)  # fmt: skip


def finished(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return optuna.load_study(study_name=study, storage=storage).get_trials(states=states)


def test_a_tiny_study_writes_a_config_that_ranker_train_takes(tmp_path):
    out, storage = tmp_path / "best.toml", f"sqlite:///{tmp_path}/s.db"
    done = tune("--model", "cgc", "--trials", "3", "--storage", storage, "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out) and "best of 3 trials" in done.stderr
    cfg = run_config.load(out, [], {})  # checked like any ranker-train config
    assert (cfg.run.data, cfg.run.model) == ("videolog", "cgc")
    lr = TRAIN_SEARCH["lr"]
    assert isinstance(lr, Float) and lr.low <= cfg.train.lr <= lr.high
    assert set(cfg.train.loss_w0) == {t.name for t in videolog.TASKS}
    assert cfg.train.numeric_encoding in TRAIN_SEARCH["numeric_encoding"].options
    best = min(finished(storage, "videolog-cgc"), key=lambda t: t.value if t.value is not None else 1e9)
    assert cfg.train.lr == best.params["train.lr"]  # the file holds the best trial's values
    trained = subprocess.run([BIN / "ranker-train", "--config", str(out), "--out", str(tmp_path / "models"),
                              "--threads", "1"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "models" / "cgc" / "1" / "model.onnx").is_file()


def test_a_study_resumes_after_ctrl_c_up_to_its_total(tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    proc = subprocess.Popen([BIN / "ranker-tune", *TINY, "--model", "mmoe", "--trials", "500", "--storage", storage],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)  # fmt: skip
    wait_until(lambda: _finished_in_file(tmp_path / "s.db") >= 1, 600, "a first trial", interval=1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "ranker-tune: interrupted" in err.strip().splitlines()[-1], err
    before = _count(storage, "videolog-mmoe")
    assert 1 <= before < 500
    again = tune("--model", "mmoe", "--trials", str(before + 2), "--storage", storage, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert _count(storage, "videolog-mmoe") == before + 2  # the earlier trials count towards the total
    assert again.stdout.strip() == "tuning/videolog-mmoe.toml" and (tmp_path / "tuning" / "videolog-mmoe.toml").is_file()
    # The study is complete: a third call starts no trial (counted among all trials, failed ones too).
    started = len(optuna.load_study(study_name="videolog-mmoe", storage=storage).trials)
    done = tune("--model", "mmoe", "--trials", str(before + 2), "--storage", storage, cwd=tmp_path)
    assert done.returncode == 0 and _count(storage, "videolog-mmoe") == before + 2
    assert len(optuna.load_study(study_name="videolog-mmoe", storage=storage).trials) == started


def _finished_in_file(path: Path) -> int:
    """Finished trials in a SQLite study file, read with a short-lived connection of its own (a
    pooled reader beside the running study's writer could hold its lock)."""
    import sqlite3

    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        try:
            return db.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()[0]
        except sqlite3.OperationalError:  # the schema is not there yet
            return 0


def _count(storage: str, study: str) -> int:
    try:
        return len(finished(storage, study))
    except KeyError:  # the study is not created yet
        return 0


@pytest.fixture
def postgres_url():
    """A fresh database on the machine's PostgreSQL (trust auth), dropped afterwards."""
    import psycopg  # the driver SQLAlchemy (Optuna's storage) uses for postgresql:// URLs

    name = f"ranker_tune_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not answering at 127.0.0.1:5432 ({exc})")
    admin.execute(f"CREATE DATABASE {name}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    admin.close()


def test_two_workers_share_one_study_in_postgresql(tmp_path, postgres_url):
    args = [BIN / "ranker-tune", *TINY, "--model", "shared-bottom", "--trials", "16", "--storage", postgres_url,
            "--study", "shared"]  # fmt: skip
    optuna.create_study(study_name="shared", storage=postgres_url)  # so that neither races to create it
    workers = [subprocess.Popen([*args, "--out", str(tmp_path / f"{i}.toml")], stderr=subprocess.PIPE, text=True,
                                cwd=tmp_path) for i in range(2)]  # fmt: skip
    for worker in workers:
        assert worker.wait(timeout=900) == 0, worker.stderr.read()
    trials = finished(postgres_url, "shared")
    assert 16 <= len(trials) <= 17  # each stops at 16; both may have started the last one at once
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both worked on the one study
    assert len({t.number for t in trials}) == len(trials)


def test_the_baselines_tune_per_task_and_evaluate_on_the_same_split(tmp_path):
    out = tmp_path / "lgb.toml"
    done = tune("--model", "lightgbm", "--trials", "2", "--storage", f"sqlite:///{tmp_path}/s.db", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    import tomllib

    tables = tomllib.loads(out.read_text())
    params = tables["baseline"]["params"]
    assert set(params) == {t.name for t in videolog.TASKS} and all("num_leaves" in p for p in params.values())
    data = videolog.to_dataset(videolog.simulate(videolog.VideoLogConfig(n_users=100, n_videos=150, n_impressions=2000)))
    splits = Splits(data)
    metrics = splits.evaluate("lightgbm", params)
    assert metrics["test"]["ctr"]["auc"] > 0.5 and "mse" in metrics["test"]["vcr"]
    linear = splits.evaluate("logistic", {t.name: {"C": 1.0, "min_frequency": 5} for t in videolog.TASKS})
    assert set(linear["test"]) == {t.name for t in videolog.TASKS}
    assert 0.0 <= min(linear["test"]["vcr"]["mse"], 1.0)  # the regression is clipped to its range


def test_what_the_base_configuration_sets_is_not_searched():
    from training.tune import trial_tables

    base = run_config.load_tables(None, ["train.numeric_encoding=\"bins\"", "train.loss_w0.ctr=2.0", "model.dropout=0.0"],
                                  {"run": {"data": "videolog", "model": "ple"}})  # fmt: skip
    trial = optuna.create_study().ask()
    tables = trial_tables(trial, base, "ple", [t.name for t in videolog.TASKS])
    assert tables["train"]["numeric_encoding"] == "bins" and tables["model"]["dropout"] == 0.0
    assert tables["train"]["loss_w0"]["ctr"] == 2.0 and "train.loss_w0.vtr" in trial.params
    assert not {"train.numeric_encoding", "train.loss_w0.ctr", "model.dropout"} & set(trial.params)
    assert {"train.lr", "model.n_levels", "model.expert_hidden"} <= set(trial.params)


def test_every_family_declares_a_search_space_over_its_own_fields():
    from training.models import FAMILIES, default_config
    from training.models.parts import BASE_SEARCH

    for name, family in FAMILIES.items():
        fields = set(default_config(name).__dataclass_fields__)
        assert family.search and set(family.search) | set(BASE_SEARCH) <= fields, name
    assert all(isinstance(p, (Float, Choice)) or hasattr(p, "low") for p in TRAIN_SEARCH.values())
