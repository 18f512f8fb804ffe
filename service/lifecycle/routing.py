"""Routing of one model's traffic: which loaded version each A/B bucket goes to, the user's bucket,
and the order start-up tries versions in."""

from __future__ import annotations

import bisect
import itertools

from contract.features import stable_hash
from service.lifecycle.control import N_BUCKETS, RoutingState
from service.lifecycle.repository import ModelVersion


def user_bucket(user_id: str) -> int:
    return stable_hash(f"ab\x1f{user_id}") % N_BUCKETS


class Routing:
    """Immutable: which loaded version each A/B bucket goes to."""

    def __init__(self, state: RoutingState, handles: dict[int, ModelVersion]):
        self.state = state
        buckets = sorted(state.buckets().items())
        self.versions = [handles[v] for v, _ in buckets]
        self.bounds = list(itertools.accumulate(c for _, c in buckets))  # bucket b: the first version whose bound exceeds b

    def pick(self, bucket: int) -> ModelVersion:
        return self.versions[bisect.bisect_right(self.bounds, bucket)]


def startup_order(interfaces: dict) -> list[int]:
    """The order start-up tries versions in when no shared state names one: the newest version with
    the interface of the oldest one, then (if none of those loads) the newest with the next oldest
    interface, and so on. A model name's interface is fixed by its first version until an admin
    changes it (allow_interface_change, remembered by the control plane): a newer folder with
    another interface (another data set's model written under this name) never wins a restart."""
    order: list[int] = []
    for oldest in sorted(interfaces):
        if oldest not in order:
            order += sorted((v for v, i in interfaces.items() if i == interfaces[oldest]), reverse=True)
    return order
