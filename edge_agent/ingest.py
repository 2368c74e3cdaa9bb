"""Frame and label messages of one site in, windows and labels into the local store.

:class:`Ingestor` is the transport-free part of the ingest worker (``handle(topic, payload)``:
decode, validate, track sequences, window, store), so a file replay or a test can drive it
without a broker. The MQTT side is :mod:`edge_agent.ingest_worker`.
"""

from __future__ import annotations

import logging

from edge_agent import topics
from edge_agent.errors import MessageRejected, StoreError
from edge_agent.logs import Throttle
from edge_agent.messages import LabelEvent
from edge_agent.store import LocalStore, SensorState
from models.errors import FrameError
from models.frame import Frame, decode
from models.windows import Window, Windower

logger = logging.getLogger(__name__)

#: Reasons that are normal MQTT behaviour, logged at DEBUG rather than WARNING.
QUIET_REASONS = frozenset({"duplicate"})


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
    """

    def __init__(
        self,
        store: LocalStore,
        site_id: str,
        window_samples: int,
        *,
        log_interval_s: float = 10.0,
    ) -> None:
        self._store = store
        self._site = site_id
        self._window_samples = window_samples
        self._windowers: dict[tuple[str, str, int], Windower] = {}
        for key, partial in store.partial_windows().items():  # resume what a restart cut
            self._windowers[key] = Windower(window_samples)
            if len(partial.samples) < window_samples:
                self._windowers[key].restore(partial)
        self._sensors: dict[tuple[str, str], SensorState] = store.sensor_states()
        self._throttle = Throttle(log_interval_s)

    def handle(self, topic: str, payload: bytes | bytearray) -> None:
        """Process one message; a bad one is counted and logged, never raised.

        Raises
        ------
        StoreError
            The store could not be written (the message must not be acknowledged).
        """
        try:
            if topic.endswith("/frames"):
                self._frame(topic, payload)
            elif topic.endswith("/labels"):
                self._label(topic, payload)
            else:
                raise MessageRejected("bad_topic", f"unexpected topic {topic!r:.200}")
        except MessageRejected as exc:
            self._reject(exc.reason, str(exc), topic)
        except StoreError:
            raise
        except Exception as exc:  # a bug must not turn one message into a crash loop
            self._reject("internal_error", f"{type(exc).__name__}: {exc}", topic, exc_info=True)

    def _frame(self, topic: str, payload: bytes | bytearray) -> None:
        asset_id, sensor_id = topics.parse_frame_topic(topic, self._site)
        try:
            frame = decode(payload)
        except FrameError as exc:
            raise MessageRejected(exc.reason, str(exc)) from exc
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

    def _reject(self, reason: str, detail: str, topic: str, *, exc_info: bool = False) -> None:
        self._store.add_rejects({reason: 1})
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
