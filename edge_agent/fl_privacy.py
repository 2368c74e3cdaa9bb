"""Client-side clipping for differentially private federated training (a Flower mod).

The server's DP wrapper (``aggregator.privacy.DpFixedClipping``) puts the clipping norm into
each training message's config; :func:`dp_clipping_mod` then clips this site's update (new
weights minus the weights received) to that L2 norm before the reply leaves the site, with
Flower's ``fixedclipping_mod``. Training messages without a clipping norm (DP off) and every
other message pass through untouched. A site that must not send unclipped updates whatever the
server asks sets ``dp-required = true`` in its node config: a training message without a
clipping norm is then answered with an error instead of weights.

Integer arrays (BatchNorm's ``num_batches_tracked``) are sent back as received: their update
counts local batches, which tells the data set's size, and Flower's clipping can neither scale
them nor leave them out of the norm (a 0-d array's update escapes the scaling but still spends
the clipping budget).

Use it on the train handler only, innermost (after any mod that changes the reply's layout,
such as update compression): ``@app.train(mods=[dp_clipping_mod])``.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Context, Error, Message, MessageType
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

#: Node-config key: refuse to train without client-side clipping.
DP_REQUIRED_KEY = "dp-required"
#: Error code of the reply to a training message a site refused (Flower's codes are below 100).
DP_REFUSED_CODE = 601


def requested_clipping_norm(msg: Message) -> float | None:
    """The clipping norm the server asked for in ``msg``'s config, or None."""
    for config in msg.content.config_records.values():
        if KEY_CLIPPING_NORM in config:
            value = config[KEY_CLIPPING_NORM]
            return float(value) if isinstance(value, int | float) else math.nan
    return None


def dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip the training update to the norm the server asked for (pass through when none).

    Parameters
    ----------
    msg : Message
        The incoming message.
    context : Context
        The ClientApp's context; its node config may set ``dp-required``.
    call_next : ClientAppCallable
        The handler (or next mod).

    Returns
    -------
    Message
        The handler's reply with its ``ArrayRecord`` clipped, the handler's reply unchanged (no
        clipping asked, not a training message), or an error reply (an unusable clipping norm,
        or none while ``dp-required`` is set).
    """
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    norm = requested_clipping_norm(msg)
    if norm is None:
        if context.node_config.get(DP_REQUIRED_KEY) is True:
            return Message(
                error=Error(
                    DP_REFUSED_CODE, "this site trains only with DP clipping (dp-required)"
                ),
                reply_to=msg,
            )
        return call_next(msg, context)
    if not math.isfinite(norm) or norm <= 0:
        return Message(
            error=Error(DP_REFUSED_CODE, f"clipping norm must be positive and finite, got {norm}"),
            reply_to=msg,
        )
    received = next(iter(msg.content.array_records.values()), None)

    def train_keeping_counters(m: Message, c: Context) -> Message:
        reply = call_next(m, c)
        if received is None or reply.has_error():
            return reply
        for record in reply.content.array_records.values():
            for key, array in list(record.items()):
                if key in received and not np.issubdtype(np.dtype(array.dtype), np.floating):
                    record[key] = received[key]
        return reply

    return fixedclipping_mod(msg, context, train_keeping_counters)
