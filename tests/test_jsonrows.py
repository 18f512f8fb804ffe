"""service.ranking.jsonrows writes the very bytes orjson writes for the equivalent list of dicts."""

import numpy as np
import orjson

from service.ranking import jsonrows


def as_dicts(shape: dict, n: int, values: dict) -> list[dict]:
    def row(node, i):
        return {k: row(v, i) if isinstance(v, dict) else values[id(v)][i] for k, v in node.items()}

    return [row(shape, i) for i in range(n)]


def test_rows_match_orjson_for_awkward_numbers_and_strings():
    rng = np.random.default_rng(0)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308, 1e-7, 1e21, 0.1, 1 / 3])
    n = 300
    f64 = np.concatenate([special, rng.standard_normal(n - len(special)) * 10.0 ** rng.integers(-30, 30, n - len(special))])
    f32 = rng.random(n, dtype=np.float32)  # model outputs: written as the float64 of each float32
    ids = ["plain", "", 'q"uote', "back\\slash", "\x00\x1f\x7f", "\u2028\u2029", "тест", "😀", "a,b", '","', "\\\""]
    ids += ["".join(map(chr, rng.integers(1, 0xD7FF, 6))) for _ in range(n - len(ids))]
    columns = {"id": ids, "score": f64.tolist(), "ctr": f32.tolist(), "x": (f32 * 3).tolist()}
    shape = {
        "id": jsonrows.strings(ids),
        "score": jsonrows.numbers(f64),
        "tasks": {"ctr": jsonrows.numbers(f32), 'we"ird': jsonrows.numbers(f32 * 3)},
        "explain": {"factors": {}, "f": jsonrows.numbers(f64)},
    }
    values = {id(shape["id"]): columns["id"], id(shape["score"]): columns["score"],
              id(shape["tasks"]["ctr"]): columns["ctr"], id(shape["tasks"]['we"ird']): columns["x"],
              id(shape["explain"]["f"]): columns["score"]}  # fmt: skip
    assert orjson.dumps(jsonrows.rows(shape)) == orjson.dumps(as_dicts(shape, n, values))


def test_every_code_point_is_escaped_as_orjson_escapes_it():
    text = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    assert ("[" + ",".join(jsonrows.strings(text)) + "]").encode() == orjson.dumps(text)


def test_one_row_and_no_rows():
    one = {"id": jsonrows.strings(["a"]), "s": jsonrows.numbers(np.array([0.5]))}
    assert orjson.loads(orjson.dumps(jsonrows.rows(one))) == [{"id": "a", "s": 0.5}]
    none = {"id": jsonrows.strings([]), "s": jsonrows.numbers(np.array([]))}
    assert orjson.dumps(jsonrows.rows(none)) == b"[]"
