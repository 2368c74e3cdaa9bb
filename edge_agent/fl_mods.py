"""Flower client mods of the ClientApp: 8-bit update compression with error feedback.

``update_compression_mod`` wraps the train handler. When the run config says
``update-compression = "int8"``, it replaces the reply's float32 weights by the site's update
(trained weights minus the global weights received) in the ``int8-ef`` codec of
:mod:`models.compression`, and marks the reply with a ``compression`` ConfigRecord; the
ServerApp decodes it before any strategy sees it (:mod:`aggregator.compression`). Evaluate
messages, and runs with ``"none"``, pass untouched.

The error-feedback residual must outlive the process: Flower starts a fresh ``flwr-clientapp``
for every message. It lives beside the site's store as ``fl-residual-<run id>.npz``, written to
a staging name, flushed and renamed (``models.durable``), so a power cut leaves the previous
residual or the new one, never half of one. A new run starts from zero and removes the
residuals of older runs. A residual that cannot be read, or that belongs to another model
layout, is logged and dropped: it only ever holds less than half a quantisation step per weight.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from models.compression import CODEC, encode_update, layout_fingerprint
from models.durable import replace_npz
from models.fl_config import RunConfig

logger = logging.getLogger(__name__)

ARRAYS_KEY = "arrays"
MARKER_KEY = "compression"  # ConfigRecord marking a compressed reply: codec, layout
# keys of the compressed ArrayRecord (which keeps the name "arrays")
Q_KEY = f"{CODEC}.q"
SCALES_KEY = f"{CODEC}.scales"
INTS_KEY = f"{CODEC}.ints"
_LAYOUT_ENTRY = "__layout__"
RESIDUAL_GLOB = "fl-residual-*.npz"
STAGING_GLOB = ".fl-residual-*.tmp"

Residual = dict[str, npt.NDArray[np.float64]]


def residual_path(context: Context) -> Path:
    """Where this site keeps the run's residual: beside the store named in the node config."""
    store = context.node_config.get("store-path")
    if not store:
        raise ValueError("update compression needs the node config's 'store-path'")
    return Path(str(store)).resolve().parent / f"fl-residual-{context.run_id}.npz"


def load_residual(path: Path, layout: str) -> Residual | None:
    """The residual saved at ``path`` for a model of ``layout``, or None (none or unusable).

    ``layout`` is the model's :func:`~models.compression.layout_fingerprint` without dtypes.
    """
    if not path.exists():
        return None
    try:
        with path.open("rb") as file, np.load(file, allow_pickle=False) as data:
            saved = bytes(data[_LAYOUT_ENTRY]).decode()
            residual = {k: np.asarray(data[k], np.float64) for k in data.files}
    except (OSError, ValueError, KeyError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        logger.warning("dropping unreadable update residual %s: %s", path, exc)
        return None
    if saved != layout:
        logger.warning("dropping update residual %s: it is for another model layout", path)
        return None
    residual.pop(_LAYOUT_ENTRY)
    return residual


def save_residual(path: Path, residual: Residual, layout: str) -> None:
    """Write ``residual`` atomically to ``path``; remove other runs' residuals and leftovers."""
    entries: dict[str, npt.NDArray[np.generic]] = dict(residual)
    entries[_LAYOUT_ENTRY] = np.frombuffer(layout.encode(), np.uint8)
    # other runs' residuals, and staging files a crash left behind, go
    replace_npz(path, entries, (RESIDUAL_GLOB, STAGING_GLOB))


def _numpy(record: ArrayRecord) -> dict[str, npt.NDArray[np.generic]]:
    return {name: array.numpy() for name, array in record.items()}


def compress_reply(
    reply: Message, global_arrays: dict[str, npt.NDArray[np.generic]], path: Path
) -> Message:
    """Replace the reply's weights by their int8 update, carrying the residual at ``path``.

    Parameters
    ----------
    reply
        The train handler's reply, with the trained weights under ``"arrays"``.
    global_arrays
        The global weights the site received this round, by name and in order.
    path
        The residual file of this run (see :func:`residual_path`).

    Returns
    -------
    Message
        ``reply``, its content now holding the compressed ``"arrays"`` and a
        ``"compression"`` ConfigRecord (codec, layout); other records unchanged.
    """
    layout = layout_fingerprint(global_arrays, dtypes=False)
    local = _numpy(reply.content.array_records[ARRAYS_KEY])
    encoded, residual = encode_update(local, global_arrays, load_residual(path, layout))
    content = RecordDict()
    for key, record in reply.content.items():
        content[key] = record
    content[ARRAYS_KEY] = ArrayRecord(
        {
            Q_KEY: Array(encoded.q),
            SCALES_KEY: Array(encoded.scales),
            INTS_KEY: Array(encoded.ints),
        }
    )
    content[MARKER_KEY] = ConfigRecord({"codec": CODEC, "layout": encoded.layout})
    save_residual(path, residual, layout)
    reply.content = content
    return reply


def update_compression_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Client mod: send train updates in 8-bit with error feedback when the run asks for it.

    Reads ``update-compression`` from the run config (``"none"`` or ``"int8"``; anything else
    is refused before training). Replies with an error, and messages other than train, pass
    untouched.
    """
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    codec = RunConfig.from_run_config(ctxt.run_config).update_compression
    if codec == "none":
        return call_next(msg, ctxt)
    if ARRAYS_KEY not in msg.content.array_records:
        return call_next(msg, ctxt)  # nothing to take an update against; the handler says why
    path = residual_path(ctxt)
    global_arrays = _numpy(msg.content.array_records[ARRAYS_KEY])
    reply = call_next(msg, ctxt)
    if reply.has_error() or ARRAYS_KEY not in reply.content.array_records:
        return reply
    return compress_reply(reply, global_arrays, path)
