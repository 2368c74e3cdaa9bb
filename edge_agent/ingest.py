"""Frame and label messages of one site in, windows and labels into the local store.

:class:`Ingestor` is the transport-free part of the ingest worker (``handle(topic, payload)``:
check, decode, validate, track sequences, window, store), so a file replay or a test can drive
it without a broker. The MQTT side is :mod:`edge_agent.ingest_worker`.

Bad input never stops ingestion: every refused message is counted by reason (the store's
``rejects``), logged at most once per reason per ``log_interval_s``, and kept as a dead letter
(:meth:`LocalStore.record_reject`), except ``duplicate`` (normal QoS 1 redelivery, counted
only). Reasons besides the codec's (:data:`models.frame.FRAME_ERROR_REASONS`) and the label
parser's: ``payload_too_large`` (checked before decoding), ``unknown_sensor`` (not in the
allowlist), ``bad_sample_rate`` (outside the configured range), ``bad_topic``,
``topic_mismatch``, ``duplicate``, ``out_of_order`` and ``internal_error`` (a bug).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import TYPE_CHECKING

from edge_agent import topics
from edge_agent.errors import MessageRejected, StoreError
from edge_agent.logs import Throttle
from edge_agent.messages import LabelEvent
from edge_agent.store import LocalStore, SensorState
from models.errors import FrameError
from models.frame import MAX_SAMPLE_RATE_HZ, Frame, decode
from models.windows import Window, Windower

if TYPE_CHECKING:
    from edge_agent.settings import AgentSettings

logger = logging.getLogger(__name__)

#: Reasons that are normal MQTT behaviour, logged at DEBUG rather than WARNING.
QUIET_REASONS = frozenset({"duplicate"})
#: Reasons counted but not kept as dead letters.
NOT_DEAD_LETTERED = frozenset({"duplicate"})


class Ingestor:
    """Turn frame and label messages of one site into store rows.

    Parameters
    ----------
    store
        The writable local store.
    site_id
        Only topics of this site are accepted.
    window_samples
        Samples per stored window (per channel).
    log_interval_s
        At most one warning per reject reason per interval.
    sensors
        Accepted ``"asset/sensor"`` pairs; ``None`` accepts every sensor of the site.
    max_payload_bytes
        Larger messages are refused before decoding (``payload_too_large``).
    sample_rate_range_hz
        Accepted sample rates ``(low, high)`` in Hz, both inclusive.

    Raises
    ------
    ValueError
        A limit is not positive or the rate range is empty.
    """

    def __init__(
        self,
        store: LocalStore,
        site_id: str,
        window_samples: int,
        *,
        log_interval_s: float = 10.0,
        sensors: Collection[str] | None = None,
        max_payload_bytes: int | None = None,
        sample_rate_range_hz: tuple[float, float] = (0.0, MAX_SAMPLE_RATE_HZ),
    ) -> None:
        low, high = sample_rate_range_hz
        if not 0.0 <= low < high:
            raise ValueError(f"sample_rate_range_hz must be 0 <= low < high, got {low}, {high}")
        if max_payload_bytes is not None and max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes must be positive, got {max_payload_bytes}")
        self._store = store
        self._site = site_id
        self._window_samples = window_samples
        self._sensors_allowed = None if sensors is None else frozenset(sensors)
        self._max_payload = max_payload_bytes
        self._rates = (low, high)
        self._windowers: dict[tuple[str, str, int], Windower] = {}
        for key, partial in store.partial_windows().items():  # resume what a restart cut
            self._windowers[key] = Windower(window_samples)
            if len(partial.samples) < window_samples:
                self._windowers[key].restore(partial)
        self._sensors: dict[tuple[str, str], SensorState] = store.sensor_states()
        self._throttle = Throttle(log_interval_s)

    @classmethod
    def from_settings(cls, store: LocalStore, settings: AgentSettings) -> Ingestor:
        """An ingestor with the site, window length and input limits of ``settings``.

        The payload limit is also kept under half of the store's per-transaction allowance
        (:attr:`LocalStore.max_batch_bytes`) so that one frame always fits the disk budget.
        """
        limit = settings.max_payload_bytes
        if store.max_batch_bytes is not None:
            limit = min(limit, max(1, store.max_batch_bytes // 2))
        return cls(
            store,
            settings.site_id,
            settings.window_samples,
            sensors=settings.sensors,
            max_payload_bytes=limit,
            sample_rate_range_hz=(settings.min_sample_rate_hz, settings.max_sample_rate_hz),
        )

    def handle(self, topic: str, payload: bytes | bytearray) -> None:
        """Process one message; a bad one is counted and logged, never raised.

        Raises
        ------
        StoreError
            The store could not be written (the message must not be acknowledged).
        """
        try:
            if self._max_payload is not None and len(payload) > self._max_payload:
                raise MessageRejected(
                    "payload_too_large",
                    f"{len(payload)} bytes, the limit is {self._max_payload}",
                )
            if topic.endswith("/frames"):
                self._frame(topic, payload)
            elif topic.endswith("/labels"):
                self._label(topic, payload)
            else:
                raise MessageRejected("bad_topic", f"unexpected topic {topic!r:.200}")
        except MessageRejected as exc:
            self._reject(exc.reason, str(exc), topic, payload)
        except StoreError:
            raise
        except Exception as exc:  # a bug must not turn one message into a crash loop
            detail = f"{type(exc).__name__}: {exc}"
            self._reject("internal_error", detail, topic, payload, exc_info=True)

    def _frame(self, topic: str, payload: bytes | bytearray) -> None:
        asset_id, sensor_id = topics.parse_frame_topic(topic, self._site)
        allowed = self._sensors_allowed
        if allowed is not None and f"{asset_id}/{sensor_id}" not in allowed:
            raise MessageRejected("unknown_sensor", f"{asset_id}/{sensor_id} is not configured")
        try:
            frame = decode(payload)
        except FrameError as exc:
            raise MessageRejected(exc.reason, str(exc)) from exc
        low, high = self._rates
        if not low <= frame.sample_rate_hz <= high:
            raise MessageRejected(
                "bad_sample_rate",
                f"{frame.sample_rate_hz:g} Hz is outside the accepted [{low:g}, {high:g}] Hz",
            )
        if (frame.asset_id, frame.sensor_id) != (asset_id, sensor_id):
            raise MessageRejected(
                "topic_mismatch",
                f"frame of {frame.asset_id}/{frame.sensor_id} on the topic of "
                f"{asset_id}/{sensor_id}",
            )
        counters = self._track_sequence(frame)
        samples = frame.samples_in_g()
        completed: dict[int, list[Window]] = {}
        partials: dict[int, Window | None] = {}
        for channel in range(frame.channels):
            windower = self._windowers.get((asset_id, sensor_id, channel))
            if windower is None:
                windower = Windower(self._window_samples)
                self._windowers[(asset_id, sensor_id, channel)] = windower
            done = windower.push(samples[channel], frame.timestamp_ns, frame.sample_rate_hz)
            if done:
                completed[channel] = done
            partials[channel] = windower.pending()
        end_ns = frame.end_timestamp_ns()
        self._store.record_frame(
            asset_id,
            sensor_id,
            seq=frame.seq,
            end_ns=end_ns,
            windows=completed,
            partials=partials,
            counters=counters,
        )
        self._sensors[(asset_id, sensor_id)] = SensorState(frame.seq, end_ns)

    def _track_sequence(self, frame: Frame) -> dict[str, int]:
        """Check ``frame.seq`` against the sensor's last one; return counters to add."""
        key = (frame.asset_id, frame.sensor_id)
        counters = {"frames": 1}
        last = self._sensors.get(key)
        if last is None:
            return counters
        if frame.seq == last.last_seq:
            raise MessageRejected("duplicate", f"{key} seq {frame.seq} seen already")
        if frame.seq < last.last_seq:
            if frame.timestamp_ns < last.last_end_ns:
                raise MessageRejected(
                    "out_of_order", f"{key} seq {frame.seq} after {last.last_seq}"
                )
            counters["seq_restarts"] = 1  # the sensor restarted its counter
            logger.info("sensor %s/%s restarted its sequence at %d", *key, frame.seq)
            self._reset(key)
        elif frame.seq > last.last_seq + 1:
            counters["seq_gaps"] = 1
            counters["frames_missing"] = frame.seq - last.last_seq - 1
            self._reset(key)
        return counters

    def _reset(self, key: tuple[str, str]) -> None:
        for (asset_id, sensor_id, _), windower in self._windowers.items():
            if (asset_id, sensor_id) == key:
                windower.reset()

    def _label(self, topic: str, payload: bytes | bytearray) -> None:
        asset_id = topics.parse_labels_topic(topic, self._site)
        event = LabelEvent.parse(payload)
        if event.asset_id != asset_id:
            raise MessageRejected(
                "label_topic_mismatch", f"label for {event.asset_id} on the topic of {asset_id}"
            )
        label_id = self._store.add_label(
            event.asset_id,
            event.label,
            event.start_ns,
            event.end_ns,
            sensor_id=event.sensor_id,
            source=event.source,
        )
        logger.info(
            "label %d: %s %s [%d, %d] from %s",
            label_id,
            event.asset_id,
            event.label,
            event.start_ns,
            event.end_ns,
            event.source,
        )

    def _reject(
        self,
        reason: str,
        detail: str,
        topic: str,
        payload: bytes | bytearray,
        *,
        exc_info: bool = False,
    ) -> None:
        kept = None if reason in NOT_DEAD_LETTERED else payload
        self._store.record_reject(reason, topic=topic, detail=detail, payload=kept)
        suppressed = self._throttle.allow(reason)
        if suppressed is None:
            return
        level = logging.DEBUG if reason in QUIET_REASONS else logging.WARNING
        logger.log(
            level,
            "rejected message on %.200s (%s): %s [%d similar suppressed]",
            topic,
            reason,
            detail,
            suppressed,
            exc_info=exc_info,
        )
