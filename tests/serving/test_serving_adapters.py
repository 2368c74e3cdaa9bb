"""Payload adapters, webhook signatures, rules and the delivery policy: pure functions."""

from __future__ import annotations

import json

import pytest

from serving.adapters import (
    MAXIMO_DESCRIPTION_MAX,
    SAP_TEXT_MAX,
    json_payload,
    maximo_payload,
    render,
    sap_payload,
)
from serving.delivery import DeliveryPolicy, backoff_s, classify, retry_after_s
from serving.integration_types import (
    AssetView,
    MaintenanceRequest,
    OutboxItem,
    Rule,
    RuleCondition,
    Webhook,
    WindowObservation,
)
from serving.rules import in_scope, window_fault
from serving.signing import sign_payload, verify_signature

T0 = 1_772_352_000.0  # 2026-03-01T08:00:00Z
REQUEST = MaintenanceRequest(
    request_id="mr_0123456789abcdef01234567",
    tenant="acme",
    asset_id="cooling-water-pump-17/drive-end",
    site="plant-a",
    fault="outer_race",
    status="open",
    rule_id="bearing",
    webhook_id="erp",
    priority=2,
    opened_at=T0 + 60,
    updated_at=T0 + 60,
    first_window_at=T0 + 3723.5,  # 09:02:03.5
    last_window_at=T0 + 3724.0,
    windows=3,
    max_failure_probability=0.93,
    iso_zone="C",
    anomaly_score=7.5,
    model_version="v4",
)
ASSET = AssetView("cooling-water-pump-17/drive-end", "plant-a", "pump 17")


def _outbox_item(attempts: int = 0, age_from: float = T0) -> OutboxItem:
    return OutboxItem(
        outbox_id=1,
        tenant="acme",
        webhook_id="erp",
        request_id=REQUEST.request_id,
        event="maintenance_request.opened",
        idempotency_key="k",
        body=b"{}",
        content_type="application/json",
        status="pending",
        attempts=attempts,
        next_attempt_at=T0,
        created_at=T0,
        age_from=age_from,
    )


def test_sap_notification_has_the_api_fields_within_their_limits():
    # Prepare
    asset = AssetView(
        ASSET.asset_id, ASSET.site, external_ids={"sap_functional_location": "1010-CWS"}
    )

    # Execute
    body = sap_payload(REQUEST, asset, {"sap_plant": "1010", "sap_notification_type": "M1"})

    # Assert
    assert len(body["NotificationText"]) <= SAP_TEXT_MAX
    assert body["NotificationText"].startswith("FedPM: outer race on")
    assert body["NotificationType"] == "M1"
    assert body["TechnicalObject"] == "1010-CWS"
    assert body["TechObjIsEquipOrFuncnlLoc"] == "EAMS_FL"
    assert body["MaintPriority"] == "2"
    assert body["MaintenancePlanningPlant"] == "1010"
    assert body["MalfunctionStartDate"] == f"/Date({int(T0 - 8 * 3600) * 1000})/"  # 00:00 UTC
    assert body["MalfunctionStartTime"] == "PT09H02M03S"
    assert REQUEST.request_id in body["MaintNotifLongTextForEdit"]


def test_sap_defaults_to_the_asset_id_as_equipment():
    # Execute
    body = sap_payload(REQUEST, ASSET, {})

    # Assert
    assert body["TechnicalObject"] == ASSET.asset_id
    assert body["TechObjIsEquipOrFuncnlLoc"] == "EAMS_EQUI"
    assert body["NotificationType"] == "M2"
    assert "MaintenancePlanningPlant" not in body


def test_maximo_work_order_maps_asset_site_and_priority():
    # Prepare
    ids = {"maximo_assetnum": "PUMP17", "maximo_location": "BLDG-4"}
    asset = AssetView(ASSET.asset_id, ASSET.site, external_ids=ids)

    # Execute
    body = maximo_payload(REQUEST, asset, {"maximo_siteid": "BEDFORD", "maximo_orgid": "EAGLENA"})

    # Assert
    assert len(body["description"]) <= MAXIMO_DESCRIPTION_MAX
    assert body["assetnum"] == "PUMP17"
    assert body["siteid"] == "BEDFORD"
    assert body["orgid"] == "EAGLENA"
    assert body["location"] == "BLDG-4"
    assert body["wopriority"] == 2
    assert body["worktype"] == "CM"
    assert body["status"] == "WAPPR"
    assert body["externalrefid"] == REQUEST.request_id
    assert body["reportdate"] == "2026-03-01T08:01:00Z"


def test_json_event_is_versioned_and_render_picks_the_format():
    # Prepare
    hook = Webhook(tenant="acme", webhook_id="erp", url="http://x", format="json", secret="s")

    # Execute
    body, content_type = render(REQUEST, ASSET, hook)

    # Assert
    assert content_type == "application/json"
    event = json.loads(body)
    assert event == json.loads(json.dumps(json_payload(REQUEST, ASSET)))
    assert event["schema"] == "fedpm.maintenance_request/v1"
    assert event["request"]["first_window_at"] == "2026-03-01T09:02:03.500000Z"


def test_signature_verifies_and_refuses_tampering_other_secrets_and_replays():
    # Prepare
    body = b'{"request":"mr_1"}'
    header = sign_payload(body, "secret-1", timestamp=int(T0))

    # Execute / Assert
    assert verify_signature(body, header, "secret-1", now=T0 + 299)
    assert not verify_signature(body + b" ", header, "secret-1", now=T0)
    assert not verify_signature(body, header, "secret-2", now=T0)
    assert not verify_signature(body, header, "secret-1", now=T0 + 301)  # a late replay
    assert not verify_signature(body, "v1=abc", "secret-1", now=T0)
    rotated = f"{header},v1={'0' * 64}"
    assert verify_signature(body, rotated, "secret-1", now=T0)


@pytest.mark.parametrize(
    ("condition", "obs", "fault"),
    [
        (RuleCondition(failure_probability_gte=0.8), ("inner_race", 0.9, None, None), "inner_race"),
        (RuleCondition(failure_probability_gte=0.8), ("inner_race", 0.7, None, None), None),
        (RuleCondition(failure_probability_gte=0.3), ("normal", 0.4, None, None), "ball"),
        (
            RuleCondition(iso_zones=frozenset("CD")),
            ("normal", 0.1, "D", None),
            "vibration_severity",
        ),
        (RuleCondition(iso_zones=frozenset("CD")), ("normal", 0.1, "B", None), None),
        (RuleCondition(anomaly_score_gte=5.0), ("normal", 0.1, None, 6.0), "anomaly"),
        (RuleCondition(anomaly_score_gte=5.0), ("normal", 0.1, None, None), None),
        (
            RuleCondition(failure_probability_gte=0.8, iso_zones=frozenset("CD"), match="all"),
            ("outer_race", 0.9, "B", None),
            None,
        ),
        (
            RuleCondition(predicted_classes=frozenset({"cage"})),
            ("cage", 0.6, None, None),
            "cage",
        ),
    ],
)
def test_window_fault(condition, obs, fault):
    # Prepare
    predicted, probability, zone, score = obs
    window = WindowObservation(T0, T0 + 0.2, predicted, probability, "ball", zone, score)

    # Execute / Assert
    assert window_fault(condition, window) == fault


def test_rule_scope():
    # Prepare
    rule = Rule("acme", "r", RuleCondition(iso_zones=frozenset("D")), "erp", sites=frozenset({"a"}))
    everywhere = Rule("acme", "r", RuleCondition(iso_zones=frozenset("D")), "erp")

    # Execute / Assert
    assert in_scope(rule, "pump-1", "a")
    assert not in_scope(rule, "pump-1", "b")
    assert in_scope(everywhere, "pump-1", "b")


def test_delivery_outcomes():
    # Prepare
    policy = DeliveryPolicy(backoff_base_s=2, backoff_cap_s=60, max_attempts=5, max_age_s=3600)
    item = _outbox_item()

    # Execute
    ok = classify(item, T0, policy, status_code=204)
    busy = classify(item, T0, policy, status_code=503, rng=lambda: 1.0)
    limited = classify(item, T0, policy, status_code=429, retry_after="120", rng=lambda: 1.0)
    refused = classify(item, T0, policy, status_code=None, error="ConnectError", rng=lambda: 0.0)
    bad = classify(item, T0, policy, status_code=400)
    moved = classify(item, T0, policy, status_code=301)
    last = classify(_outbox_item(attempts=4), T0, policy, status_code=500)
    old = classify(_outbox_item(age_from=T0 - 3599), T0, policy, status_code=500)

    # Assert
    assert ok.outcome == "delivered"
    assert (busy.outcome, busy.next_attempt_at) == ("retry", T0 + 2.0)
    assert limited.next_attempt_at == T0 + 120.0
    assert (refused.outcome, refused.next_attempt_at) == ("retry", T0 + 1.0)
    assert bad.outcome == "dead"
    assert "permanent" in bad.error
    assert moved.outcome == "dead"
    assert last.outcome == "dead"
    assert "5 attempts" in last.error
    assert old.outcome == "dead"


def test_backoff_grows_to_its_cap_and_retry_after_reads_both_forms():
    # Prepare
    policy = DeliveryPolicy(backoff_base_s=1, backoff_cap_s=30)

    # Execute
    delays = [backoff_s(n, policy, lambda: 1.0) for n in range(1, 8)]

    # Assert
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert retry_after_s("7", T0) == 7.0
    assert retry_after_s("Sun, 01 Mar 2026 08:00:30 GMT", T0) == 30.0
    assert retry_after_s("soon", T0) is None
