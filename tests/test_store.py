"""One suite, run against both feature stores: the embedded one and the real Redis."""

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from service.features.store import InProcessStore, RedisStore, load_tables, redis_client
from tests.conftest import REDIS_URL

USERS = [("u1", {"age_bucket": "25-34", "user_watch_minutes": 12.5}), ("u2", {"device": "ios"})]
ITEMS = [("v1", {"category": "music", "video_len": 35.0}), ("v2", {"category": "pets", "video_len": 8.0})]


class CountingRedis(redis.Redis):
    """A real client that counts the commands it sends."""

    commands = 0

    def execute_command(self, *args, **kwargs):
        CountingRedis.commands += 1
        return super().execute_command(*args, **kwargs)


@pytest.fixture(params=["embedded", "redis"])
def store(request):
    if request.param == "embedded":
        return InProcessStore()
    prefix = request.getfixturevalue("redis_prefix")
    return RedisStore(CountingRedis.from_url(REDIS_URL, socket_timeout=0.5), prefix)


def test_put_then_fetch_returns_features_and_none_for_unknown_ids(store):
    assert store.put("user", USERS) == 2 and store.put("item", ITEMS) == 2
    got = store.fetch("u1", ["v2", "nope", "v1"])
    assert got.user == USERS[0][1]
    assert got.items == [ITEMS[1][1], None, ITEMS[0][1]]
    assert got.misses == 1 and not got.degraded
    unknown = store.fetch("stranger", ["v1"])
    assert unknown.user is None and unknown.misses == 1


def test_a_whole_request_is_one_round_trip(redis_prefix):
    store = RedisStore(CountingRedis.from_url(REDIS_URL), redis_prefix)
    store.put("item", ITEMS * 300)
    before = CountingRedis.commands
    store.fetch("u1", [f"v{i}" for i in range(500)])
    assert CountingRedis.commands - before == 1


def test_tables_load_from_the_simulator_files(store, trained):
    counts = load_tables(store, trained.features_dir)
    assert counts == {"user": len(trained.log.users), "item": len(trained.log.videos)}
    vid = trained.log.videos.index[5]
    assert store.fetch("u0", [vid]).items[0]["video_len"] == trained.log.videos.loc[vid, "video_len"]


def test_the_loader_command_writes_pipelined_batches_into_redis(trained, redis_prefix):
    bin_dir = Path(sys.executable).parent
    out = subprocess.run([bin_dir / "ranker-load-features", "--redis-url", REDIS_URL, "--prefix", redis_prefix,
                          "--features", trained.features_dir, "--batch", "64"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    client = redis.Redis.from_url(REDIS_URL)
    assert len(list(client.scan_iter(match=f"{redis_prefix}feat:item:*", count=1000))) == len(trained.log.videos)
    assert len(list(client.scan_iter(match=f"{redis_prefix}feat:user:*", count=1000))) == len(trained.log.users)


def test_redis_down_degrades_instead_of_failing(own_redis):
    store = RedisStore(redis_client(own_redis.url, timeout_s=0.02), "t:", retry_after_s=30)
    store.put("item", ITEMS)
    assert store.fetch("u1", ["v1"]).items[0] == ITEMS[0][1]
    own_redis.stop()
    got = store.fetch("u1", ["v1", "v2"])
    assert got.degraded and got.items == [None, None] and got.user is None
    own_redis.start()
    # Within retry_after_s the store does not try again: no timeout paid per request.
    assert store.fetch("u1", ["v1"]).degraded
    store.backoff.reset()  # the back-off window has passed
    assert not store.fetch("u1", ["v1"]).degraded


def test_slow_redis_times_out_at_the_configured_limit(own_redis):
    store = RedisStore(redis_client(own_redis.url, timeout_s=0.02), "t:")
    store.put("item", ITEMS)
    sleeper = subprocess.Popen(["redis-cli", "-p", str(own_redis.port), "DEBUG", "SLEEP", "1"])
    try:
        import time

        time.sleep(0.2)  # let DEBUG SLEEP start
        start = time.monotonic()
        got = store.fetch("u1", ["v1"])
        elapsed = time.monotonic() - start
    finally:
        sleeper.wait(timeout=10)
    assert got.degraded
    assert elapsed < 0.5  # gave up long before Redis woke (1 s)


def test_the_loader_command_says_what_is_wrong_in_one_line(tmp_path, redis_prefix, capsys):
    from service.features.loader import main

    def run(*args) -> tuple[int, str]:
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's errors
            code = exit_.code
        return code, capsys.readouterr().err.strip().splitlines()[-1]

    url = REDIS_URL
    assert run("--redis-url", url, "--features", str(tmp_path / "none")) == (
        2, f"ranker-load-features: error: --features {tmp_path / 'none'}: no users.jsonl or items.jsonl there")
    assert run("--redis-url", url, "--features", str(tmp_path), "--batch", "0")[0] == 2
    (tmp_path / "users.jsonl").write_text('{"id": "u1"}\n')
    code, line = run("--redis-url", url, "--prefix", redis_prefix, "--features", str(tmp_path))
    assert code == 1 and "lacks 'features'" in line
    code, line = run("--redis-url", "redis://127.0.0.1:1/0", "--features", str(tmp_path))
    assert code == 1 and line.startswith("ranker-load-features: ") and "refused" in line.lower()
