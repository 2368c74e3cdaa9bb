"""A poisoning ClientApp for the robustness bench: the production ClientApp plus one attack mod.

Bench code only, never shipped in the product's FAB: ``bench.bench_fl_poison`` builds a
separate Flower app folder whose ``pyproject.toml`` names ``bench.fl_attack:app`` as its
``clientapp``. Every SuperNode of such a run runs this app; only a SuperNode started with
``--node-config "attack='signflip:10' ..."`` poisons (on the Simulation Engine: the virtual site
whose ``partition-id`` is the run config's ``attack-partition``, with the run config's
``attack``), the others behave exactly like the
production ClientApp (``edge_agent.client_app.app``, its own mods included), which handles
every message.

Attacks (``attack`` in the node config, ``KIND:K``):

``signflip:K``
    reply ``w_global - K * (w_local - w_global)``: the honest update reversed and scaled.
``scale:K``
    reply ``w_global + K * (w_local - w_global)``: the honest update boosted.

Floating-point arrays only (BatchNorm's integer ``num_batches_tracked`` is left alone), in
their own dtype, so the reply passes the server's structure and finite-value guards and only
its size and direction give it away.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from edge_agent.client_app import app as production

logger = logging.getLogger(__name__)

ATTACK_KEY = "attack"
ATTACK_PARTITION_KEY = "attack-partition"  # simulation: the virtual site that attacks
ARRAYS_KEY = "arrays"
ATTACKS = ("signflip", "scale")


def parse_attack(spec: str) -> tuple[str, float]:
    """``"signflip:10"`` -> ``("signflip", 10.0)``.

    >>> parse_attack("scale:3")
    ('scale', 3.0)
    """
    kind, _, k = spec.partition(":")
    if kind not in ATTACKS or not k:
        raise ValueError(f"attack must be one of {ATTACKS} with a factor, e.g. 'signflip:10'")
    return kind, float(k)


def poison(
    global_arrays: dict[str, np.ndarray], local_arrays: dict[str, np.ndarray], kind: str, k: float
) -> dict[str, np.ndarray]:
    """The poisoned reply for an honest ``local`` update of ``global``.

    >>> g, w = {"w": np.zeros(2, np.float32)}, {"w": np.ones(2, np.float32)}
    >>> poison(g, w, "signflip", 10)["w"].tolist()
    [-10.0, -10.0]
    """
    sign = -1.0 if kind == "signflip" else 1.0
    out = {}
    for name, w in local_arrays.items():
        g = global_arrays[name]
        if np.issubdtype(w.dtype, np.floating):
            out[name] = (g + sign * k * (w - g)).astype(w.dtype)
        else:
            out[name] = w
    return out


def attack_of(context: Context) -> str:
    """This node's attack: its node config's ``attack``, or on Flower's Simulation Engine the
    run config's ``attack`` when the node's ``partition-id`` is the run's ``attack-partition``.

    >>> from flwr.app import RecordDict
    >>> ctx = Context(1, 1, {"partition-id": 4}, RecordDict(),
    ...               {"attack": "scale:3", "attack-partition": 4})
    >>> attack_of(ctx)
    'scale:3'
    """
    spec = str(context.node_config.get(ATTACK_KEY, ""))
    if spec or "partition-id" not in context.node_config:
        return spec
    target = int(str(context.run_config.get(ATTACK_PARTITION_KEY, -1)))
    if int(str(context.node_config["partition-id"])) != target:
        return ""
    return str(context.run_config.get(ATTACK_KEY, ""))


def poison_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the handler honestly, then poison its train reply when this node is the attacker."""
    spec = attack_of(context)
    if msg.metadata.message_type != MessageType.TRAIN or not spec:
        return call_next(msg, context)
    kind, k = parse_attack(spec)
    global_arrays = {n: a.numpy() for n, a in msg.content.array_records[ARRAYS_KEY].items()}
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    if "compression" in reply.content.config_records:
        raise ValueError("the poisoning bench runs with update-compression = 'none' only")
    local = {n: a.numpy() for n, a in reply.content.array_records[ARRAYS_KEY].items()}
    poisoned = poison(global_arrays, local, kind, k)
    reply.content.array_records[ARRAYS_KEY] = ArrayRecord(
        {n: Array(a) for n, a in poisoned.items()}  # 0-d arrays stay 0-d
    )
    logger.warning("site poisoned its update: %s x %g", kind, k)
    return reply


app = ClientApp(mods=[poison_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    """The production ClientApp's train handler, with its mods."""
    return production(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The production ClientApp's evaluate handler, with its mods."""
    return production(msg, context)
