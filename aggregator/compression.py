"""Server end of update compression: decode int8 train replies before any strategy sees them.

The ClientApp's ``edge_agent.fl_mods.update_compression_mod`` replies with the site's update
in the ``int8-ef`` codec (:mod:`models.compression`) and a ``compression`` ConfigRecord. Here
each such reply becomes what an uncompressed site would have sent: full float32 weights, the
global weights sent to that site plus the dequantised update. Strategies, guards and the round
log therefore need no change and cannot tell the difference.

Two ways in:

- :func:`decompress_replies` (pure, on real Flower Messages), given the global ArrayRecord;
- :class:`CompressionGrid`, a Grid that wraps the ServerApp's own. It remembers the ArrayRecord
  of every message it sends, decodes each reply against the one it answers, and counts the
  bytes of every round both ways (:class:`RoundTraffic`). Wrap once in ``main``::

      strategy.start(grid=CompressionGrid(grid), ...)

A compressed reply that cannot be decoded (another model layout, a damaged record) becomes an
error reply naming the site's node and the reason: strategies already drop error replies, so
one bad site costs its own update, never the round.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, Error, Message, RecordDict
from flwr.app.message.message import make_message
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from models.compression import CODEC, CompressionError, EncodedUpdate, decode_update

logger = logging.getLogger(__name__)

ARRAYS_KEY = "arrays"
MARKER_KEY = "compression"
Q_KEY = f"{CODEC}.q"
SCALES_KEY = f"{CODEC}.scales"
INTS_KEY = f"{CODEC}.ints"
DECODE_ERROR_CODE = 4601  # Error.code of a reply whose update could not be decoded


def message_wire_bytes(msg: Message) -> int:
    """Bytes Flower moves for ``msg``: its serialised objects, each counted once.

    Flower 1.2x sends a message as a tree of content-addressed objects (message, record dict,
    records, arrays, array chunks), each serialised with ``deflate()``; identical objects go
    once. gRPC framing (a few bytes per object) is not counted.
    """
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


def is_compressed(msg: Message) -> bool:
    """Whether ``msg`` is a reply carrying a compressed update."""
    return msg.has_content() and MARKER_KEY in msg.content.config_records


def _numpy(record: ArrayRecord) -> dict[str, npt.NDArray[np.generic]]:
    return {name: array.numpy() for name, array in record.items()}


def _encoded(msg: Message) -> EncodedUpdate:
    marker = msg.content.config_records[MARKER_KEY]
    if marker.get("codec") != CODEC:
        raise CompressionError(f"unknown update codec {marker.get('codec')!r}")
    if ARRAYS_KEY not in msg.content.array_records:
        raise CompressionError("compressed reply without an 'arrays' record")
    record = msg.content.array_records[ARRAYS_KEY]
    if set(record) != {Q_KEY, SCALES_KEY, INTS_KEY}:
        raise CompressionError(f"compressed 'arrays' record holds {sorted(record)}")
    return EncodedUpdate(
        q=record[Q_KEY].numpy(),
        scales=record[SCALES_KEY].numpy(),
        ints=record[INTS_KEY].numpy(),
        layout=str(marker.get("layout", "")),
    )


def decompress_reply(msg: Message, global_arrays: ArrayRecord) -> Message:
    """Turn one compressed reply back into full weights (in place); others pass unchanged.

    Parameters
    ----------
    msg
        A reply from a ClientApp; only one carrying a ``compression`` record is changed.
    global_arrays
        The ArrayRecord the server sent in the message ``msg`` replies to.

    Returns
    -------
    Message
        ``msg`` with ``"arrays"`` holding ``global + update`` (float32, as the global) and the
        ``compression`` record removed; or, if the update cannot be decoded, an error reply
        (same metadata) that says why.
    """
    if not is_compressed(msg):
        return msg
    try:
        weights = decode_update(_encoded(msg), _numpy(global_arrays))
    except (CompressionError, ValueError, TypeError) as exc:
        reason = f"undecodable {CODEC} update from node {msg.metadata.src_node_id}: {exc}"
        logger.warning("%s", reason)
        return make_message(msg.metadata, error=Error(DECODE_ERROR_CODE, reason))
    content = RecordDict()
    for key, record in msg.content.items():
        if key != MARKER_KEY:
            content[key] = record
    content[ARRAYS_KEY] = ArrayRecord({k: Array(np.asarray(v)) for k, v in weights.items()})
    msg.content = content
    return msg


def decompress_replies(replies: Iterable[Message], global_arrays: ArrayRecord) -> list[Message]:
    """:func:`decompress_reply` over a round's replies, all answering ``global_arrays``.

    A strategy can call it at the top of ``aggregate_train`` with the ArrayRecord its
    ``configure_train`` sent; :class:`CompressionGrid` does the same without the strategy
    knowing.
    """
    return [decompress_reply(msg, global_arrays) for msg in replies]


@dataclass
class RoundTraffic:
    """Bytes moved for one round and message type, both ways, as serialised by Flower.

    ``up_float32_bytes`` is what the replies would have weighed with float32 weights (the
    decoded replies, serialised); equal to ``up_bytes`` when nothing was compressed.
    """

    down_messages: int = 0
    down_bytes: int = 0
    up_messages: int = 0
    up_bytes: int = 0
    up_float32_bytes: int = 0

    @property
    def up_ratio(self) -> float:
        """``up_bytes / up_float32_bytes`` (1.0 before any reply)."""
        return self.up_bytes / self.up_float32_bytes if self.up_float32_bytes else 1.0


@dataclass(frozen=True)
class _Sent:
    round: str
    arrays: ArrayRecord | None


def _round_of(msg: Message) -> str:
    """The server round a message belongs to: Flower strategies put it in the config record."""
    if msg.has_content():
        for record in msg.content.config_records.values():
            if "server-round" in record:
                return str(record["server-round"])
    return msg.metadata.group_id or "?"


class CompressionGrid(Grid):
    """A Grid that decodes compressed train replies and counts each round's bytes.

    Delegates everything to ``inner``. Replies are matched to the message they answer by
    Flower's message id (``reply_to_message_id``; a message's id is its content hash), falling
    back to the node the message was sent to. ``traffic`` maps ``(server round, message
    type)`` to a :class:`RoundTraffic`; the round is the ``server-round`` of the message's
    config record (Flower's strategies leave ``group_id`` empty).
    """

    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        self.traffic: dict[tuple[str, str], RoundTraffic] = {}
        self._sent_by_id: dict[str, _Sent] = {}
        self._sent_by_node: dict[int, _Sent] = {}

    # --- delegated as is ------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        """Delegate to the wrapped grid."""
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        """The wrapped grid's run."""
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Delegate to the wrapped grid (deprecated in Flower; ``Message(...)`` instead)."""
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Delegate to the wrapped grid."""
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        """Delegate to the wrapped grid."""
        return self.inner.get_nodes()

    # --- sending and receiving --------------------------------------------------------------
    def _remember(self, messages: Iterable[Message]) -> list[Message]:
        sent = list(messages)
        for msg in sent:
            server_round = _round_of(msg)
            key = (server_round, msg.metadata.message_type)
            traffic = self.traffic.setdefault(key, RoundTraffic())
            traffic.down_messages += 1
            traffic.down_bytes += message_wire_bytes(msg)
            arrays = None
            if msg.has_content() and ARRAYS_KEY in msg.content.array_records:
                arrays = msg.content.array_records[ARRAYS_KEY]
            entry = _Sent(server_round, arrays)
            self._sent_by_id[msg.object_id] = entry
            self._sent_by_node[msg.metadata.dst_node_id] = entry
        return sent

    def _receive(self, replies: Iterable[Message]) -> list[Message]:
        out = []
        for reply in replies:
            sent = self._sent_by_id.pop(reply.metadata.reply_to_message_id, None)
            if sent is None:
                sent = self._sent_by_node.get(reply.metadata.src_node_id)
            server_round = sent.round if sent else (reply.metadata.group_id or "?")
            key = (server_round, reply.metadata.message_type)
            traffic = self.traffic.setdefault(key, RoundTraffic())
            traffic.up_messages += 1
            size = message_wire_bytes(reply)
            traffic.up_bytes += size
            if is_compressed(reply):
                if sent is None or sent.arrays is None:
                    reason = (
                        f"compressed reply from node {reply.metadata.src_node_id} answers "
                        "no message this grid sent with arrays"
                    )
                    logger.warning("%s", reason)
                    reply = make_message(reply.metadata, error=Error(DECODE_ERROR_CODE, reason))
                else:
                    reply = decompress_reply(reply, sent.arrays)
                if reply.has_content():
                    size = message_wire_bytes(reply)
            traffic.up_float32_bytes += size
            out.append(reply)
        return out

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Remember what is sent, then push it through the wrapped grid."""
        return self.inner.push_messages(self._remember(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull through the wrapped grid and decode compressed replies."""
        return self._receive(self.inner.pull_messages(message_ids))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send through the wrapped grid; decode its replies and count both ways."""
        sent = self._remember(messages)
        try:
            replies = self._receive(self.inner.send_and_receive(sent, timeout=timeout))
        finally:
            self._sent_by_id.clear()
            self._sent_by_node.clear()
        self._log_round(sent)
        return replies

    def _log_round(self, sent: list[Message]) -> None:
        for key in {(_round_of(m), m.metadata.message_type) for m in sent}:
            t = self.traffic[key]
            logger.info(
                "round %s %s: down %d B in %d messages, up %d B in %d replies "
                "(%.1f %% of their float32 size)",
                *key,
                t.down_bytes,
                t.down_messages,
                t.up_bytes,
                t.up_messages,
                100 * t.up_ratio,
            )
