"""Data sets for --data: generators' defining properties, loaders' row counts and label rates."""

import numpy as np
import pandas as pd
import pytest

from contract.features import FeatureTransform
from training.data import SAMPLES, census, data_root, kuairand, synthetic, videolog


@pytest.mark.parametrize("p", [-0.8, 0.0, 0.3, 0.9, 1.0])
def test_synthetic_weight_vectors_have_cosine_p_and_norm_c(p):
    w1, w2 = synthetic.weight_vectors(50, 2.5, p, np.random.default_rng(3))
    assert np.linalg.norm(w1) == pytest.approx(2.5) and np.linalg.norm(w2) == pytest.approx(2.5)
    assert w1 @ w2 / (np.linalg.norm(w1) * np.linalg.norm(w2)) == pytest.approx(p, abs=1e-12)


def test_synthetic_label_correlation_rises_with_p():
    corr = [np.corrcoef(synthetic.generate(synthetic.SyntheticConfig(n=20_000, d=20, p=p, seed=1)).labels.T)[0, 1]
            for p in (0.0, 0.5, 0.75, 0.9, 1.0)]  # fmt: skip
    assert all(a < b for a, b in zip(corr, corr[1:])), corr
    assert corr[0] < 0.1 and corr[-1] > 0.9


def test_synthetic_is_seeded_and_shaped_as_configured():
    config = synthetic.SyntheticConfig(n=300, d=7, m=3, p=0.4, seed=5)
    a, b = synthetic.generate(config), synthetic.generate(config)
    assert len(a) == 300 and len(a.features) == 7 and [t.name for t in a.tasks] == ["y1", "y2"]
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, synthetic.generate(synthetic.SyntheticConfig(n=300, d=7, seed=6)).labels)
    with pytest.raises(ValueError):
        synthetic.weight_vectors(5, 1.0, 1.5, np.random.default_rng(0))


@pytest.fixture(scope="module")
def census_data():
    return census.load(sample=True)  # datasets/samples/: 5,000 rows, stratified by both labels


def check_stratified_split(data, sizes, atol):
    rates = data.labels.mean(axis=0)
    parts = data.split(seed=census.SPLIT_SEED)
    assert [len(p) for p in parts] == sizes
    for part in parts:  # stratified: every part keeps both label rates (and their combination)
        np.testing.assert_allclose(part.labels.mean(axis=0), rates, atol=atol)
        both = (part.labels[:, 0] * part.labels[:, 1]).mean()
        assert both == pytest.approx((data.labels[:, 0] * data.labels[:, 1]).mean(), abs=atol)
    again = data.split(seed=census.SPLIT_SEED)
    np.testing.assert_array_equal(again[2].labels, parts[2].labels)
    np.testing.assert_array_equal(again[2].columns["age"], parts[2].columns["age"])


def test_census_has_two_tasks_and_a_stratified_60_20_20_split(census_data):
    assert len(census_data) == 5_000
    assert [t.name for t in census_data.tasks] == ["income", "never_married"]
    rates = census_data.labels.mean(axis=0)  # the sample keeps the full file's rates (0.062, 0.432)
    assert rates[0] == pytest.approx(0.062, abs=0.001) and rates[1] == pytest.approx(0.432, abs=0.001)
    check_stratified_split(census_data, [3_000, 1_000, 1_000], atol=1.5e-3)


@pytest.mark.full_data
def test_census_full_file_has_its_rows_rates_and_split():
    data = census.load()
    assert len(data) == 99_762
    rates = data.labels.mean(axis=0)
    assert rates[0] == pytest.approx(0.062, abs=0.001) and rates[1] == pytest.approx(0.432, abs=0.001)
    check_stratified_split(data, [59_858, 19_953, 19_951], atol=2e-4)


def test_census_inputs_exclude_the_label_columns_and_missing_values_take_the_default(census_data):
    names = {f.name for f in census_data.features}
    assert not names & {"marital_status", "income", "instance_weight"}
    assert len(names) == 39 and sum(f.kind == "dense" for f in census_data.features) == 7
    migration = census_data.columns["migration_msa"]
    assert any(v is None for v in migration)  # '?' in the file
    spec = next(f for f in census_data.features if f.name == "migration_msa")
    assert "?" not in spec.vocabulary
    ids = FeatureTransform([spec]).encode(5, per_row={"migration_msa": migration[:5]}).sparse_ids
    assert ids[[v is None for v in migration[:5]]].tolist() == [[0]] * sum(v is None for v in migration[:5])


def test_census_reads_a_slice_for_fast_runs():
    assert len(census.load(sample=True, nrows=500)) == 500


@pytest.fixture(scope="module")
def kuairand_data():
    return kuairand.load(sample=True)  # datasets/samples/: 5,000 impressions and their users' rows


def test_kuairand_rows_label_rates_and_completion_mask(kuairand_data):
    data = kuairand_data
    assert len(data) == 5_000
    assert [t.name for t in data.tasks] == ["click", "long_view", "completion", "share", "comment"]
    rates = data.labels.mean(axis=0)  # the sample keeps the full file's rates (stratified by the binary labels)
    assert rates[0] == pytest.approx(0.657, abs=0.001) and rates[3] == pytest.approx(0.0078, abs=0.0003)
    # completion exists only where the duration is known (82.1 % of the sample's rows, 81.5 % of the file's)
    assert data.masks[:, 2].mean() == pytest.approx(0.8206, abs=0.0001)
    assert np.isnan(data.columns["video_len"][~data.masks[:, 2]]).all()
    completion = data.labels[data.masks[:, 2], 2]
    assert completion.min() >= 0.0 and completion.max() <= 1.0
    assert data.masks[:, [0, 1, 3, 4]].all()
    # user features joined for every row (every user of the log is in the user table)
    assert all(v is not None for v in data.columns["user_active_degree"])
    assert data.video_len_column == "video_len"


@pytest.mark.full_data
def test_kuairand_full_file_rows_rates_and_the_video_table_it_does_not_join():
    data = kuairand.load()
    assert len(data) == 41_828
    rates = data.labels.mean(axis=0)
    assert rates[0] == pytest.approx(0.657, abs=0.001) and rates[3] == pytest.approx(0.0078, abs=0.0002)
    assert data.masks[:, 2].mean() == pytest.approx(1 - 0.185, abs=0.001)  # duration 0 in 18.5 % of rows
    assert all(v is not None for v in data.columns["user_active_degree"])
    # the basic video table covers too few of the log's videos to join (documented in the loader)
    videos = pd.read_csv(data_root() / kuairand.DIRECTORY / "video_features_basic_pure.csv", usecols=["video_id"])
    assert np.isin(np.unique(data.columns["video_id"].astype(int)), videos["video_id"]).sum() == 113


def test_kuairand_joins_every_user_feature_row_by_row_through_the_schema(kuairand_data):
    data, folder = kuairand_data, SAMPLES / kuairand.DIRECTORY
    users = pd.read_csv(folder / kuairand.USER_FILE).set_index("user_id")
    assert set(kuairand.USER_SPARSE) | set(kuairand.USER_DENSE) == set(users.columns)  # every column joined
    assert set(users.index) == set(data.columns["user_id"].astype(int))  # the sample's table: exactly its users
    specs = {f.name: f for f in data.features}
    for name in kuairand.USER_SPARSE:  # categorical: a vocabulary of the log's values, or hashed when wide
        assert specs[name].kind == "sparse" and specs[name].source == "user"
        wide = pd.Series(data.columns[name]).nunique() > kuairand.MAX_VOCABULARY
        assert (specs[name].vocabulary is None) == wide == (specs[name].buckets is not None)
    assert specs["onehot_feat3"].buckets and specs["user_active_degree"].vocabulary
    for name in kuairand.USER_DENSE:  # counts: dense, log1p then standardised
        assert specs[name].kind == "dense" and specs[name].source == "user" and specs[name].log1p
    rows = np.random.default_rng(0).choice(len(data), 200, replace=False)
    table = users.loc[data.columns["user_id"][rows].astype(int)]
    for name in ("user_active_degree", "fans_user_num_range", "onehot_feat3", "onehot_feat12"):
        expected = [None if pd.isna(v) else v for v in table[name]]
        assert list(data.columns[name][rows]) == expected  # the row's own user's value (NaN: missing)
    np.testing.assert_array_equal(data.columns["register_days"][rows], table["register_days"].to_numpy(float))
    # the joined values reach the model's input: known categories get a non-zero id
    enc = FeatureTransform(data.features).encode(len(rows), per_row={k: v[rows] for k, v in data.columns.items()})
    names = [f.name for f in data.features if f.kind == "sparse"]
    for name in ("user_active_degree", "onehot_feat1", "register_days_range"):
        assert (enc.sparse_ids[:, names.index(name)] > 0).all()
    assert not {"author_id", "video_type", "music_id"} & set(data.columns)  # the video table is not joined


def test_data_root_follows_the_flag_then_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("RANKER_DATA_DIR", raising=False)
    assert data_root().name == "data" and data_root().parent.name == "shared"  # <repo>/../shared/data
    monkeypatch.setenv("RANKER_DATA_DIR", str(tmp_path))
    assert data_root() == tmp_path
    assert data_root("/elsewhere") == data_root("/elsewhere")


def test_kuairand_reads_a_slice_from_a_given_folder():
    data = kuairand.load(SAMPLES / kuairand.DIRECTORY, nrows=300)
    assert len(data) == 300 and data.labels.shape == (300, 5)


def test_the_samples_folder_is_a_data_folder_the_loaders_read_as_they_read_the_full_one():
    assert census.load(SAMPLES / census.FILE).sha256() == census.load(sample=True).sha256()
    assert kuairand.load(SAMPLES / kuairand.DIRECTORY).sha256() == kuairand.load(sample=True).sha256()
    assert "repository sample" in census.load(sample=True, nrows=10).description


@pytest.mark.parametrize("loader, name", [(census.load, "census"), (kuairand.load, "kuairand")])
def test_a_missing_full_file_names_the_fetch_script_the_data_folder_and_the_sample(loader, name, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        loader(tmp_path / "nowhere")
    message = str(error.value)
    for says in (str(tmp_path / "nowhere"), "bash scripts/fetch-data.sh", "--data-dir", "RANKER_DATA_DIR",
                 f"--set data.{name}.sample=true", "datasets/samples/"):  # fmt: skip
        assert says in message, says
    with pytest.raises(ValueError, match="true or false"):
        loader(sample="yes")


def test_videolog_task_correlation_knob_raises_label_correlation():
    def post_click_corr(rho):
        data = videolog.to_dataset(videolog.simulate(videolog.VideoLogConfig(
            n_users=300, n_videos=400, n_impressions=60_000, seed=1, task_correlation=rho)))  # fmt: skip
        clicked = data.masks[:, 1]
        return np.corrcoef(data.labels[clicked][:, [2, 3]].T)[0, 1]  # completion vs share

    low, mid, high = (post_click_corr(r) for r in (0.0, 0.5, 1.0))
    assert low < mid < high and high - low > 0.05
    with pytest.raises(ValueError):
        videolog.simulate(videolog.VideoLogConfig(n_impressions=10, task_correlation=1.5))


def test_videolog_has_five_tasks_with_post_click_sample_spaces():
    data = videolog.to_dataset(videolog.simulate(videolog.VideoLogConfig(n_users=50, n_videos=80, n_impressions=3000)))
    assert [t.name for t in data.tasks] == ["ctr", "vtr", "vcr", "shr", "cmr"]
    clicked = data.labels[:, 0] > 0.5
    assert data.masks[:, 0].all() and (data.masks[:, 1:] == clicked[:, None]).all()
    assert (data.labels[~clicked, 1:] == 0).all()
