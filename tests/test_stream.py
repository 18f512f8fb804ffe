"""Parquet streaming: a chunking-free seeded split, statistics fitted in one pass, bounded chunks,
and ranker-train --data parquet producing a normal version folder."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from contract.modelspec import ModelSpec, sha256_file
from tests.conftest import stream_args
from training import cli
from training.data.stream import ParquetStream, split_of
from training.models import config_with
from training.train import TrainConfig, fit_features, run_parquet_training


def test_split_is_seeded_follows_the_fractions_and_ignores_chunking():
    rows = np.arange(50_000)
    split = split_of(rows, seed=3, fractions=(0.8, 0.1))
    np.testing.assert_allclose(np.bincount(split) / len(rows), [0.8, 0.1, 0.1], atol=0.01)
    np.testing.assert_array_equal(np.concatenate([split_of(rows[:123], 3, (0.8, 0.1)), split_of(rows[123:], 3, (0.8, 0.1))]), split)
    assert not np.array_equal(split, split_of(rows, seed=4, fractions=(0.8, 0.1)))


def test_chunks_are_bounded_and_round_trip_the_raw_columns(parquet_log):
    data, path = parquet_log
    stream = ParquetStream(path, chunk_rows=700)
    assert stream.n_rows == len(data) and [t.name for t in stream.tasks] == [t.name for t in data.tasks]
    parts = list(stream.chunks())
    assert max(len(chunk) for _, chunk in parts) <= 700 and sum(len(c) for _, c in parts) == len(data)
    first = parts[0][1]
    for name in ("user_id", "hour", "video_len"):
        assert list(first.columns[name]) == list(data.columns[name][: len(first)])
    np.testing.assert_array_equal(first.labels, data.labels[: len(first)])
    np.testing.assert_array_equal(first.masks, data.masks[: len(first)])


def test_one_pass_statistics_and_held_out_rows_match_the_in_memory_split(parquet_log):
    data, path = parquet_log
    features, val, test, n_train = ParquetStream(path, chunk_rows=700, split_seed=5).prepare()
    split = split_of(np.arange(len(data)), 5, data.split_fractions)
    assert n_train == int((split == 0).sum())
    expected = {f.name: f for f in fit_features(data.subset(np.flatnonzero(split == 0)))}
    for f in features:
        if f.kind == "dense":
            assert f.mean == pytest.approx(expected[f.name].mean, rel=1e-9)
            assert f.std == pytest.approx(expected[f.name].std, rel=1e-6)
    np.testing.assert_array_equal(val.labels, data.labels[split == 1])
    assert list(test.columns["video_id"]) == list(data.columns["video_id"][split == 2])
    _, capped, _, _ = ParquetStream(path, chunk_rows=700, split_seed=5, max_eval_rows=100).prepare()
    assert len(capped) == 100


def test_ranker_train_streams_a_parquet_file_into_a_version_folder(parquet_log, tmp_path, capsys):
    _, path = parquet_log
    code = cli.main([*stream_args(path), "--out", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.strip().splitlines()[-1] == str(tmp_path / "cgc" / "1")
    spec = ModelSpec.model_validate_json((tmp_path / "cgc" / "1" / "model.json").read_text())
    assert spec.training_data.sha256 == sha256_file(path) and spec.training_data.rows["total"] == 5000
    assert spec.training_data.rows["train"] + spec.training_data.rows["validation"] + spec.training_data.rows["test"] == 5000
    assert "auc" in spec.metrics["test.ctr"]
    assert cli.main(["--data", "parquet", "--out", str(tmp_path)]) == 2  # no path given: a clear error


def test_null_labels_read_as_nan_outside_the_space_and_leave_it_inside_and_training_stays_finite(parquet_log, tmp_path):
    """A producer may write null where a task has no label: outside the task's sample space it is
    never read; inside it the row has no target, so it leaves that task's space."""
    data, path = parquet_log
    table = pq.read_table(path)
    k = [t.name for t in data.tasks].index("vtr")
    null = ~data.masks[:, k] | (np.arange(len(data)) % 7 == 0)  # outside the click space, and 1 row in 7
    column = pa.array(np.where(null, 0.0, data.labels[:, k]).astype(np.float32), mask=null)
    i = table.schema.get_field_index("label.vtr")
    pq.write_table(table.set_column(i, table.schema.field(i), column), tmp_path / "nulls.parquet", row_group_size=900)

    chunks = [chunk for _, chunk in ParquetStream(tmp_path / "nulls.parquet", chunk_rows=700).chunks()]
    labels, masks = np.concatenate([c.labels for c in chunks]), np.concatenate([c.masks for c in chunks])
    np.testing.assert_array_equal(np.isnan(labels[:, k]), null)
    np.testing.assert_array_equal(masks[:, k], data.masks[:, k] & ~null)
    np.testing.assert_array_equal(np.delete(masks, k, axis=1), np.delete(data.masks, k, axis=1))
    assert (data.masks[:, k] & null).any()  # some rows did leave the space

    config, model = TrainConfig(epochs=1, batch_size=256, progress=False), config_with("cgc", {"expert_hidden": (8,)})
    result = run_parquet_training(tmp_path / "nulls.parquet", "cgc", config, model, log=lambda _: None, chunk_rows=1000)
    assert all(np.isfinite(v) for v in result.history[0].values())
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    test_rows = split_of(np.arange(len(data)), 0, data.split_fractions) == 2
    assert result.metrics["test"]["vtr"]["samples"] == (data.masks[test_rows, k] & ~null[test_rows]).sum()
