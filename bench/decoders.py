"""The /v1/rank body decoder: the route's (orjson, then pydantic's validation of the Python objects)
against pydantic-core's own JSON path (`model_validate_json`, parsing and validating in one pass),
on the same bodies, alternated in blocks (bench.common.alternated).

    python -m bench.decoders [--features data/features] [--repeat 2000]

Both produce the same RankRequest (checked). Prints p50 per body at 100 / 500 / 1,000 candidates and
writes bench/results/decoders.json.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.common import ROOT, alternated, make_request, percentiles_ms, print_table, write_result
from service.api.jsonbody import loads
from service.schemas import RankRequest

SIZES = (100, 500, 1000)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", type=Path, default=ROOT / "data" / "features")
    p.add_argument("--repeat", type=int, default=2000)
    args = p.parse_args()
    results, rows = {}, []
    for n in SIZES:
        body = make_request(n, args.features)

        def route() -> RankRequest:
            return RankRequest.model_validate(loads(body))

        def one_pass() -> RankRequest:
            return RankRequest.model_validate_json(body)

        assert route() == one_pass(), "the two decoders read the body differently"
        ours, theirs = alternated(route, one_pass, args.repeat, block=50)
        results[str(n)] = {"orjson + validate_python (the route)": percentiles_ms([t for t, _ in ours]),
                           "model_validate_json": percentiles_ms([t for t, _ in theirs])}  # fmt: skip
        for name, stats in results[str(n)].items():
            rows.append([n, name, stats["p50_ms"], stats["p99_ms"]])
    print_table(["candidates", "decoder", "p50 ms", "p99 ms"], rows)
    path = write_result("decoders", {
        "what": "decode and validate one /v1/rank body, in process, alternated blocks of 50",
        "load_average_1_5_15": list(os.getloadavg()),
        "results": results,
    })  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
