"""ranker-log-sink on the real Redis: what the service logged reaches Parquet once, whatever kills the sink."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
import redis
from fastapi.testclient import TestClient

from contract import impressions as imp
from service.app import create_app
from service.settings import Settings
from tests.conftest import REDIS_URL, wait_until
from training.data.logsink import GROUP, Sink

N_CANDIDATES = 4
REQUESTS = 60  # enough rows for the next version's train / validation / test split


@pytest.fixture
def client():
    c = redis.Redis.from_url(REDIS_URL)
    yield c
    c.close()


def drain(sink: Sink) -> None:
    while sink.run_once():
        pass


def logged_rows(out) -> list[tuple[str, str]]:
    """(request id, item id) of every row in every impressions file."""
    rows = []
    for path in sorted((out / "impressions").rglob("*.parquet")):
        table = pq.read_table(path, columns=[imp.REQUEST_ID, imp.ITEM_ID]).to_pydict()
        rows += list(zip(table[imp.REQUEST_ID], table[imp.ITEM_ID]))
    return rows


def add_records(client, prefix: str, start: int, count: int) -> list[tuple[str, str]]:
    """Synthetic impression records straight into the stream; returns the rows they must become."""
    key, expected = prefix + imp.IMPRESSIONS_STREAM, []
    pipe = client.pipeline()
    for r in range(start, start + count):
        ids = [f"v{r}-{i}" for i in range(N_CANDIDATES)]
        rec = imp.record(f"req{r}", f"u{r % 7}", "ple", 1, ids, {"network": "wifi", "hour": r % 24},
                         {"video_len": np.full(N_CANDIDATES, 12.5)}, {"ctr": np.full(N_CANDIDATES, 0.1)},
                         np.arange(N_CANDIDATES), np.zeros(N_CANDIDATES))  # fmt: skip
        pipe.xadd(key, {"record": orjson.dumps(rec, option=orjson.OPT_SERIALIZE_NUMPY)})
        expected += [(f"req{r}", i) for i in ids]
    pipe.execute()
    return expected


def test_the_service_log_reaches_parquet_and_re_encodes_to_what_the_model_saw(trained, redis_prefix, tmp_path, client):
    settings = Settings(models_dir=trained.version_dir.parent.parent, features_dir=None, watch="off",
                        redis_url=REDIS_URL, redis_prefix=redis_prefix, feature_store="embedded", log_sample=1.0)  # fmt: skip
    request = {"user": {"id": "u3", "features": {}}, "context": {"network": "wifi", "hour": 21},
               "candidates": [{"id": f"v{i}", "video_len": 10.0 + i} for i in range(N_CANDIDATES)]}  # fmt: skip
    app = create_app(settings)
    with TestClient(app) as c:
        answers = [c.post("/v1/rank", json=request).json() for _ in range(3)]
        mv, _ = app.state.registry.resolve(None, None, "u3")
        wait_until(lambda: client.xlen(redis_prefix + imp.IMPRESSIONS_STREAM) == 3, 10, "three logged requests")
    sink = Sink(client, tmp_path, redis_prefix, block_ms=100)
    drain(sink)
    assert sorted(logged_rows(tmp_path)) == sorted((a["request_id"], i["id"]) for a in answers for i in a["items"])
    table = pq.read_table(next((tmp_path / "impressions" / mv.name / str(mv.version)).glob("*.parquet"))).to_pydict()
    one = [i for i, rid in enumerate(table[imp.REQUEST_ID]) if rid == answers[0]["request_id"]]
    shared = {name: table[name][one[0]] for name in mv.transform.by_source["user"] + mv.transform.by_source["context"]}
    per_row = {name: [table[name][i] for i in one] for name in mv.transform.by_source["item"]}
    from_parquet = mv.transform.encode(len(one), shared, per_row)
    record = orjson.loads(client.xrange(redis_prefix + imp.IMPRESSIONS_STREAM, count=1)[0][1][b"record"])
    from_log = mv.transform.encode(len(one), record["shared"], record["per_row"])
    np.testing.assert_array_equal(from_parquet.sparse_ids, from_log.sparse_ids)
    np.testing.assert_array_equal(from_parquet.dense, from_log.dense)
    positions = {table[imp.ITEM_ID][i]: table[imp.POSITION][i] for i in one}
    assert [positions[item["id"]] for item in answers[0]["items"]] == list(range(N_CANDIDATES))


def test_a_sink_that_dies_between_its_files_and_its_commit_or_ack_writes_nothing_twice(redis_prefix, tmp_path, client,
                                                                                         monkeypatch):  # fmt: skip
    def killed(*_args):
        raise RuntimeError("killed here")

    expected = add_records(client, redis_prefix, 0, 30)
    sink = Sink(client, tmp_path, redis_prefix, batch=10, block_ms=100)
    monkeypatch.setattr(sink, "_commit", killed)
    with pytest.raises(RuntimeError):
        sink.run_once()
    assert len(logged_rows(tmp_path)) == 10 * N_CANDIDATES  # the batch's file is there, uncommitted

    restarted = Sink(client, tmp_path, redis_prefix, batch=10, block_ms=100)  # removes it, reads the entries again
    assert logged_rows(tmp_path) == []
    with monkeypatch.context() as m:
        m.setattr(client, "xack", killed)
        with pytest.raises(RuntimeError):
            restarted.run_once()  # files written and committed, the entries never acknowledged
    assert len(logged_rows(tmp_path)) == 10 * N_CANDIDATES

    drain(Sink(client, tmp_path, redis_prefix, batch=10, block_ms=100))
    assert sorted(logged_rows(tmp_path)) == sorted(expected)  # every row once
    assert client.xpending(redis_prefix + imp.IMPRESSIONS_STREAM, GROUP)["pending"] == 0


@pytest.mark.slow
def test_a_sink_killed_mid_stream_and_restarted_loses_and_repeats_nothing(redis_prefix, tmp_path, client):
    expected = add_records(client, redis_prefix, 0, 1500)
    command = [sys.executable, "-m", "training.data.logsink", "--redis-url", REDIS_URL, "--prefix", redis_prefix,
               "--out", str(tmp_path), "--batch", "20", "--block-ms", "100"]  # fmt: skip
    for kill_after_files in (3, 12):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = len(list(tmp_path.rglob("*.parquet")))
        wait_until(lambda: len(list(tmp_path.rglob("*.parquet"))) >= before + kill_after_files, 60, "files")
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: wherever it is in a batch
        proc.wait()
        expected += add_records(client, redis_prefix, 10_000 * kill_after_files, 100)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(logged_rows(tmp_path)) >= len(expected), 120, "every row")
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    rows = logged_rows(tmp_path)
    assert len(rows) == len(set(rows)) and set(rows) == set(expected)
    assert not list(tmp_path.rglob("*.tmp"))


def test_feedback_joins_the_logged_impressions_into_rows_that_train_the_next_version(trained, redis_prefix, tmp_path,
                                                                                     client):  # fmt: skip
    from contract.modelspec import ModelSpec
    from tests.conftest import stream_args
    from training import cli
    from training.data.logjoin import join

    settings = Settings(models_dir=trained.version_dir.parent.parent, features_dir=None, watch="off",
                        redis_url=REDIS_URL, redis_prefix=redis_prefix, feature_store="embedded", log_sample=1.0)  # fmt: skip
    request = {"user": {"id": "u3"}, "context": {"network": "wifi", "hour": 21},
               "candidates": [{"id": f"v{i}", "video_len": 10.0 + i} for i in range(N_CANDIDATES)]}  # fmt: skip
    with TestClient(create_app(settings)) as c:
        served = [c.post("/v1/rank", json=request).json()["request_id"] for _ in range(REQUESTS)]
        first, second = served[:2]
        events = [
            {"request_id": first, "item_id": "v0", "task": "ctr", "value": 1},
            {"request_id": first, "item_id": "v0", "task": "vtr", "value": 1},
            {"request_id": first, "item_id": "v0", "task": "vcr", "value": 0.7},
            {"request_id": first, "item_id": "v0", "task": "shr", "value": 1},
            {"request_id": second, "item_id": "v1", "task": "shr", "value": 1},  # shared without a click: no space
            {"request_id": "never-served", "item_id": "v0", "task": "ctr", "value": 1},
            {"request_id": first, "item_id": "not-shown", "task": "ctr", "value": 1},
            {"request_id": first, "item_id": "v2", "task": "likes", "value": 1},
        ]
        assert c.post("/v1/feedback", json={"events": events}).json() == {"accepted": 8}
        bad = c.post("/v1/feedback", json={"events": [{"request_id": first, "item_id": "v0", "task": "ctr", "value": "x"}]})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "events[0].value"
        wait_until(lambda: client.xlen(redis_prefix + imp.IMPRESSIONS_STREAM) == REQUESTS, 10, "every logged request")
    drain(Sink(client, tmp_path / "logs", redis_prefix, block_ms=100))

    spec = ModelSpec.model_validate_json((trained.version_dir / "model.json").read_bytes())
    table, counts = join(tmp_path / "logs", spec)
    assert counts == {"impressions": REQUESTS * N_CANDIDATES, "events": 8, "joined": 5, "unknown_request": 1,
                      "unknown_item": 1, "unknown_task": 1, "after_window": 0}  # fmt: skip
    rows = table.to_pydict()
    assert table.num_rows == REQUESTS * N_CANDIDATES and sum(rows["label.ctr"]) == 1 and all(rows["mask.ctr"])
    clicked = rows["label.ctr"].index(1.0)
    assert rows["video_id"][clicked] == "v0" and rows["label.vcr"][clicked] == pytest.approx(0.7)
    assert [rows[f"mask.{t}"][clicked] for t in ("vtr", "vcr", "shr", "cmr")] == [True, True, True, True]
    assert rows["label.shr"][clicked] == 1.0 and rows["label.cmr"][clicked] == 0.0
    assert sum(rows["mask.shr"]) == 1  # the share without a click is outside share's sample space

    path = tmp_path / "rows.parquet"
    pq.write_table(table, path)
    assert cli.main([*stream_args(path), "--set", "data.parquet.chunk_rows=64", "--out", str(tmp_path / "next")]) == 0
    assert (tmp_path / "next" / "cgc" / "1" / "model.onnx").exists()


def test_a_consumer_name_that_could_be_taken_for_anothers_file_prefix_is_refused(tmp_path, client):
    with pytest.raises(ValueError, match="consumer names"):
        Sink(client, tmp_path, "never:", consumer="sink-2")  # "sink-*" files would also match sink-2's
