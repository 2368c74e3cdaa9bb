"""MQTT topics the edge agent reads and writes (all under ``fedpm/v1/{site}/``).

=====================================  ======  ==========================================
topic                                  dir     payload
=====================================  ======  ==========================================
``{site}/{asset}/{sensor}/frames``     in      sensor frame (``models.frame``), QoS 1
``{site}/{asset}/labels``              in      label event JSON (``messages.LabelEvent``)
``{site}/{asset}/health``              out     retained health JSON (``messages.Health``)
``{site}/agent/status``                out     retained ``online`` / ``offline`` (will)
=====================================  ======  ==========================================

``agent`` is therefore reserved: it cannot be an asset id.
"""

from __future__ import annotations

from typing import Final

from edge_agent.errors import MessageRejected

PREFIX: Final = "fedpm/v1"
STATUS_ONLINE: Final = b"online"
STATUS_OFFLINE: Final = b"offline"


def frames_filter(site: str) -> str:
    """Subscription filter for every frame of ``site``."""
    return f"{PREFIX}/{site}/+/+/frames"


def labels_filter(site: str) -> str:
    """Subscription filter for every label event of ``site``."""
    return f"{PREFIX}/{site}/+/labels"


def health_topic(site: str, asset_id: str) -> str:
    """Topic of an asset's retained health message."""
    return f"{PREFIX}/{site}/{asset_id}/health"


def status_topic(site: str) -> str:
    """Topic of the agent's retained online/offline status."""
    return f"{PREFIX}/{site}/agent/status"


def agent_alarm_topic(site: str, subject: str) -> str:
    """Retained state of one agent condition (``store``, ``store_integrity``, ...)."""
    return f"{PREFIX}/{site}/agent/alarms/{subject}"


def parse_frame_topic(topic: str, site: str) -> tuple[str, str]:
    """Return ``(asset_id, sensor_id)`` of a frame topic of ``site``.

    Raises
    ------
    MessageRejected
        ``bad_topic`` if ``topic`` is not ``fedpm/v1/{site}/{asset}/{sensor}/frames``.
    """
    parts = topic.split("/")
    if len(parts) != 6 or "/".join(parts[:3]) != f"{PREFIX}/{site}" or parts[5] != "frames":
        raise MessageRejected("bad_topic", f"not a frame topic of site {site}: {topic!r:.200}")
    return parts[3], parts[4]


def parse_labels_topic(topic: str, site: str) -> str:
    """Return the asset id of a label-event topic of ``site``.

    Raises
    ------
    MessageRejected
        ``bad_topic`` if ``topic`` is not ``fedpm/v1/{site}/{asset}/labels``.
    """
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != f"{PREFIX}/{site}" or parts[4] != "labels":
        raise MessageRejected("bad_topic", f"not a label topic of site {site}: {topic!r:.200}")
    return parts[3]
