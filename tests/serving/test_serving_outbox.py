"""The outbox's leases: two replicas sharing one state file never hold one row at once."""

from __future__ import annotations

import threading
from pathlib import Path

from serving.adapters import render
from serving.integration_types import (
    AssetView,
    DeliveryResult,
    Rule,
    RuleCondition,
    Webhook,
    WindowObservation,
)
from serving.state import SqliteStateStore

T0 = 1_772_352_000.0


def _queue(store: SqliteStateStore, assets: int) -> None:
    store.put_webhook(Webhook("acme", "erp", "http://127.0.0.1:9/x", secret="s" * 16))
    rule = Rule("acme", "r", RuleCondition(failure_probability_gte=0.0), "erp")
    store.put_rule(rule)
    for i in range(assets):
        obs = [WindowObservation(T0, T0 + 0.2, "ball", 0.9, "ball")]
        store.observe_windows("acme", AssetView(f"pump-{i}", "plant-a"), obs, render, T0)


def test_a_leased_row_goes_to_one_replica_until_its_lease_runs_out(tmp_path: Path):
    # Prepare: two replicas' stores on one file
    a = SqliteStateStore(tmp_path / "state.sqlite")
    b = SqliteStateStore(tmp_path / "state.sqlite")
    _queue(a, assets=3)

    # Execute
    by_a = a.claim_outbox("replica-a", T0, limit=10, lease_s=60)
    by_b_now = b.claim_outbox("replica-b", T0 + 1, limit=10, lease_s=60)
    by_b_later = b.claim_outbox("replica-b", T0 + 61, limit=10, lease_s=60)
    late_a = a.finish_delivery(by_a[0][0].outbox_id, "replica-a", DeliveryResult("delivered"), T0)
    b_done = b.finish_delivery(by_a[0][0].outbox_id, "replica-b", DeliveryResult("delivered"), T0)

    # Assert
    assert len(by_a) == 3
    assert by_b_now == []
    assert {i.outbox_id for i, _ in by_b_later} == {i.outbox_id for i, _ in by_a}
    assert late_a is False  # replica a lost its lease: its result is not recorded
    assert b_done is True
    assert a.outbox_counts() == {"pending": 2, "delivered": 1, "dead": 0}
    a.close()
    b.close()


def test_concurrent_claims_never_share_a_row(tmp_path: Path):
    # Prepare
    path = tmp_path / "state.sqlite"
    seed = SqliteStateStore(path)
    _queue(seed, assets=40)
    seed.close()
    stores = [SqliteStateStore(path) for _ in range(4)]
    claimed: list[list[int]] = [[] for _ in stores]

    def claim(n: int) -> None:
        while True:
            got = stores[n].claim_outbox(f"replica-{n}", T0, limit=3, lease_s=600)
            if not got:
                return
            claimed[n].extend(item.outbox_id for item, _ in got)

    # Execute
    threads = [threading.Thread(target=claim, args=(n,)) for n in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Assert
    every = [i for ids in claimed for i in ids]
    assert len(every) == 40
    assert len(set(every)) == 40
    for store in stores:
        store.close()
