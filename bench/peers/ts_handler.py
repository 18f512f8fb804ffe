"""Peer (c): a TorchServe handler serving the PLE in PyTorch eager.

TorchServe's Java frontend takes the HTTP request and hands its body to one of the model's Python
worker processes, which runs this handler. The project's feature transform and scoring formula come
from bench/peers/core.py; the module is rebuilt by bench/peers/torch_model.py. One torch thread per
worker, `default_workers_per_model=2` (TorchServe's performance guide: workers x threads = cores).
bench/compare_servers.py builds the archive and the config file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from ts.torch_handler.base_handler import BaseHandler

# TorchServe runs this handler from its model store, in its own venv: the repository root comes from PEER_ROOT.
sys.path.insert(0, os.environ["PEER_ROOT"])
from bench.peers.core import RankingCore  # noqa: E402
from bench.peers.torch_model import load_model  # noqa: E402
from service.schemas import RankRequest  # noqa: E402


class PLEHandler(BaseHandler):
    def initialize(self, context) -> None:
        torch.set_num_threads(int(os.environ.get("PEER_TORCH_THREADS", "1")))
        model_dir = Path(os.environ["PEER_MODEL"])
        self.core = RankingCore(model_dir, Path(os.environ["PEER_FEATURES"]))
        self.model = load_model(model_dir, Path(os.environ["PEER_STATE"]))
        self.initialized = True

    def handle(self, data, context) -> list[dict]:
        answers = []
        for row in data:  # one row per request in the (optional) server-side batch
            body = row.get("body") or row.get("data")
            raw = json.loads(body) if isinstance(body, (bytes, bytearray, str)) else body
            req = RankRequest.model_validate(raw)  # the service's wire model, as every peer validates
            inputs, lengths = self.core.inputs(req)
            with torch.inference_mode():
                outputs = self.model(torch.from_numpy(inputs["sparse_ids"]), torch.from_numpy(inputs["dense"]))
            items = self.core.ranked(req, [o.numpy() for o in outputs], lengths)
            answers.append({"request_id": req.request_id, "model": self.core.spec.name,
                            "version": self.core.spec.version, "items": items})  # fmt: skip
        return answers
