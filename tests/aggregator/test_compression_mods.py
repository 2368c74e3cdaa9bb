"""Update compression on both ends: the ClientApp's mod and the server's decoder, on real
Flower Messages (edge_agent.fl_mods, aggregator.compression)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from aggregator.compression import (
    DECODE_ERROR_CODE,
    CompressionGrid,
    decompress_replies,
    is_compressed,
    message_wire_bytes,
)
from edge_agent.client_app import app as client_app
from edge_agent.fl_mods import load_residual, residual_path, update_compression_mod
from fedpm.demo import app_dir
from fedpm.federation import LocalFederation, SiteNode
from fedpm.procs import ProcessGroup
from fedpm.seed_store import seed_store
from models.compression import layout_fingerprint
from models.errors import SignalError
from models.network import build_model
from models.registry import FileRegistry
from models.runtime import OnnxClassifier
from models.simulator import MachineProfile

RUN_ID = 11


def _global_arrays(seed: int = 0) -> ArrayRecord:
    return ArrayRecord(build_model(seed=seed).state_dict())


def _numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def _instruction(
    arrays: ArrayRecord | None,
    *,
    node_id: int = 3,
    server_round: int = 1,
    message_type: str = MessageType.TRAIN,
) -> Message:
    """A message as a SuperNode receives it: its id is its content hash, set by the grid."""
    content = RecordDict({"config": ConfigRecord({"server-round": server_round})})
    if arrays is not None:
        content["arrays"] = arrays
    metadata = Metadata(
        run_id=RUN_ID,
        message_id="",
        src_node_id=0,
        dst_node_id=node_id,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    msg = Message(metadata=metadata, content=content)  # type: ignore[call-overload]
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


def _context(
    store: Path, codec: str, run_id: int = RUN_ID, node_id: int = 3, **run_config: object
) -> Context:
    """A fresh Context, as each flwr-clientapp process gets one."""
    return Context(
        run_id=run_id,
        node_id=node_id,
        node_config={"store-path": str(store), "site-id": f"site-{node_id}"},
        state=RecordDict(),
        run_config={"update-compression": codec, **run_config},  # type: ignore[dict-item]
    )


def _replying_with(local: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    """A train handler whose training ends at ``local``."""

    def handler(msg: Message, ctx: Context) -> Message:
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in local.items()}),
                "metrics": MetricRecord({"train-loss": 0.5, "num-examples": 40}),
                "site": ConfigRecord({"site-id": f"site-{ctx.node_id}"}),
            }
        )
        return Message(content=content, reply_to=msg)

    return handler


def _moved(reference: dict[str, np.ndarray], step: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        k: (v + rng.normal(0, step, v.shape)).astype(v.dtype) if v.dtype.kind == "f" else v + 5
        for k, v in reference.items()
    }


@pytest.mark.integration
def test_client_app_sends_an_int8_update_the_server_restores(tmp_path: Path) -> None:
    # Prepare: a real site store and the real ClientApp (its mods included)
    store = tmp_path / "site" / "store.sqlite"
    store.parent.mkdir()
    seed_store(store, MachineProfile(), ("normal", "inner_race"), windows_per_mode=12, seed=4)
    global_arrays = _global_arrays()

    # Execute: the same round with and without compression
    plain = client_app(_instruction(global_arrays), _context(store, "none", local_epochs=1))
    packed = client_app(_instruction(global_arrays), _context(store, "int8", local_epochs=1))
    packed_bytes = message_wire_bytes(packed)
    [restored] = decompress_replies([packed], global_arrays)

    # Assert: the reply is compressed and a quarter of the float32 reply's size
    assert not plain.has_error()
    assert not packed.has_error()
    assert packed_bytes <= 0.26 * message_wire_bytes(plain)
    assert not is_compressed(restored)
    # ...the server gets back the trained model, each tensor within half a quantisation step
    trained, decoded = _numpy(plain.content["arrays"]), _numpy(restored.content["arrays"])
    assert list(decoded) == list(trained)
    for name, value in trained.items():
        assert decoded[name].dtype == value.dtype
        update = value.astype(np.float64) - global_arrays[name].numpy()
        step = np.abs(update).max() / 127
        assert np.abs(decoded[name] - value.astype(np.float64)).max() <= step / 2 + 1e-6, name
    # ...metrics and site travel unchanged, and the residual waits beside the store
    assert restored.content["metrics"]["num-examples"] == plain.content["metrics"]["num-examples"]
    assert restored.content["site"]["site-id"] == "site-3"
    assert (store.parent / f"fl-residual-{RUN_ID}.npz").exists()


def test_residual_outlives_the_process_and_feeds_the_next_round(tmp_path: Path) -> None:
    # Prepare
    store = tmp_path / "store.sqlite"
    g0 = _global_arrays()
    local1 = _moved(_numpy(g0), 1e-3, seed=1)

    # Execute: round 1 in one "process" (a fresh Context), FedAvg, round 2 in another
    reply1 = update_compression_mod(
        _instruction(g0), _context(store, "int8"), _replying_with(local1)
    )
    residual1 = load_residual(
        residual_path(_context(store, "int8")), layout_fingerprint(_numpy(g0), dtypes=False)
    )
    [decoded1] = decompress_replies([reply1], g0)
    g1, _ = FedAvg(min_train_nodes=1, min_available_nodes=1).aggregate_train(1, [decoded1])
    assert g1 is not None
    local2 = _moved(_numpy(g1), 1e-3, seed=2)
    reply2 = update_compression_mod(
        _instruction(g1, server_round=2), _context(store, "int8"), _replying_with(local2)
    )
    [decoded2] = decompress_replies([reply2], g1)
    g2 = _numpy(decoded2.content["arrays"])
    residual2 = load_residual(
        residual_path(_context(store, "int8")), layout_fingerprint(_numpy(g1), dtypes=False)
    )

    # Assert: round 1's residual is what its decoding missed, and round 2 carried it (although
    # FedAvg made the int64 buffers float64): the two rounds' decoded updates add up to the
    # true ones minus round 2's residual only
    assert g1["features.0.1.num_batches_tracked"].dtype == "float64"
    assert residual1 is not None
    assert residual2 is not None
    g0_np, g1_np = _numpy(g0), _numpy(g1)
    for name, value in g0_np.items():
        if value.dtype.kind != "f":
            continue
        np.testing.assert_allclose(
            residual1[name], local1[name].astype(np.float64) - g1_np[name], atol=1e-6
        )
        true_sum = (local1[name] - value).astype(np.float64) + (local2[name] - g1_np[name])
        decoded_sum = g2[name].astype(np.float64) - value
        np.testing.assert_allclose(true_sum - decoded_sum, residual2[name], atol=2e-6)


def test_a_new_run_starts_without_the_old_residual(tmp_path: Path) -> None:
    # Prepare
    store = tmp_path / "store.sqlite"
    g0 = _global_arrays()
    local = _moved(_numpy(g0), 1e-3, seed=3)
    update_compression_mod(_instruction(g0), _context(store, "int8"), _replying_with(local))
    old = tmp_path / f"fl-residual-{RUN_ID}.npz"
    assert old.exists()
    crashed = tmp_path / f".fl-residual-{RUN_ID}.npz.999.tmp"  # a write a power cut stopped
    crashed.write_bytes(b"half")

    # Execute
    reply = update_compression_mod(
        _instruction(g0), _context(store, "int8", run_id=RUN_ID + 1), _replying_with(local)
    )

    # Assert: the old run's files are gone; the new run's update is the plain one (no residual)
    assert not old.exists()
    assert not crashed.exists()
    assert (tmp_path / f"fl-residual-{RUN_ID + 1}.npz").exists()
    fresh = update_compression_mod(
        _instruction(g0), _context(store, "int8", run_id=RUN_ID + 2), _replying_with(local)
    )
    np.testing.assert_array_equal(
        reply.content["arrays"]["int8-ef.q"].numpy(), fresh.content["arrays"]["int8-ef.q"].numpy()
    )


@pytest.mark.parametrize(
    "damaged",
    [b"not a numpy archive", b"PK\x03\x04" + b"\x00" * 40],  # the second: a broken zip
)
def test_an_unreadable_residual_is_dropped_not_fatal(tmp_path: Path, damaged: bytes) -> None:
    # Prepare: a residual file damaged on disk
    store = tmp_path / "store.sqlite"
    g0 = _global_arrays()
    (tmp_path / f"fl-residual-{RUN_ID}.npz").write_bytes(damaged)

    # Execute
    reply = update_compression_mod(
        _instruction(g0), _context(store, "int8"), _replying_with(_moved(_numpy(g0), 1e-3, 4))
    )

    # Assert
    assert is_compressed(reply)
    layout = layout_fingerprint(_numpy(g0), dtypes=False)
    assert load_residual(tmp_path / f"fl-residual-{RUN_ID}.npz", layout)


def test_mod_leaves_evaluate_and_uncompressed_runs_alone_and_refuses_unknown_codecs(
    tmp_path: Path,
) -> None:
    # Prepare
    store = tmp_path / "store.sqlite"
    g0 = _global_arrays()
    local = _moved(_numpy(g0), 1e-3, seed=5)
    calls: list[str] = []

    def handler(msg: Message, ctx: Context) -> Message:
        calls.append(msg.metadata.message_type)
        return _replying_with(local)(msg, ctx)

    # Execute
    evaluated = update_compression_mod(
        _instruction(g0, message_type=MessageType.EVALUATE), _context(store, "int8"), handler
    )
    plain = update_compression_mod(_instruction(g0), _context(store, "none"), handler)
    with pytest.raises(SignalError, match="update-compression must be one of none, int8"):
        update_compression_mod(_instruction(g0), _context(store, "zstd"), handler)

    # Assert: untouched replies, no residual written, the bad codec refused before training
    assert not is_compressed(evaluated)
    assert not is_compressed(plain)
    assert list(plain.content["arrays"]) == list(g0)
    assert calls == [MessageType.EVALUATE, MessageType.TRAIN]
    assert not list(tmp_path.glob("fl-residual-*"))


def test_server_decodes_before_fedavg_and_turns_a_bad_update_into_an_error(
    tmp_path: Path,
) -> None:
    # Prepare: two sites' compressed replies, one encoded against another model
    g0 = _global_arrays()
    other = ArrayRecord(
        {
            k: Array(v.numpy()[..., :1] if k == "head.weight" else v.numpy())
            for k, v in _global_arrays(seed=9).items()
        }
    )
    for site in ("a", "b"):
        (tmp_path / site).mkdir()
    local_a = _moved(_numpy(g0), 1e-3, seed=6)
    local_b = _moved(_numpy(other), 1e-3, seed=7)
    good = update_compression_mod(
        _instruction(g0, node_id=1),
        _context(tmp_path / "a" / "s.db", "int8", node_id=1),
        _replying_with(local_a),
    )
    bad = update_compression_mod(
        _instruction(other, node_id=2),
        _context(tmp_path / "b" / "s.db", "int8", node_id=2),
        _replying_with(local_b),
    )

    # Execute
    decoded = decompress_replies([good, bad], g0)
    arrays, metrics = FedAvg(min_train_nodes=1, min_available_nodes=1).aggregate_train(1, decoded)

    # Assert: the good one is whole weights again, the bad one an error that says why
    assert not is_compressed(decoded[0])
    assert decoded[1].has_error()
    assert decoded[1].error.code == DECODE_ERROR_CODE
    assert "node 2" in str(decoded[1].error.reason)
    assert "layout" in str(decoded[1].error.reason)
    assert arrays is not None
    assert metrics is not None
    assert list(arrays) == list(g0)
    for name, value in _numpy(arrays).items():
        if value.dtype.kind == "f":
            step = np.abs(local_a[name].astype(np.float64) - g0[name].numpy()).max() / 127
            assert np.abs(value - local_a[name]).max() <= step / 2 + 1e-6


class LoopbackGrid(Grid):
    """Delivers each message to an in-process ClientApp, one fresh Context per message."""

    def __init__(self, app: ClientApp, stores: dict[int, Path], codec: str) -> None:
        self.app, self.stores, self.codec = app, stores, codec
        self._replies: dict[str, Message] = {}

    def set_run(self, run):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    @property
    def run(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.stores)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id  # as Flower's grid does
            node = msg.metadata.dst_node_id
            ctx = _context(self.stores[node], self.codec, node_id=node)
            self._replies[msg.object_id] = self.app(msg, ctx)
            ids.append(msg.object_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def test_compression_grid_runs_fedavg_rounds_and_counts_bytes_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a ClientApp whose training moves every weight a little, behind the mod
    monkeypatch.setattr(TaskIdentity, "_run_id", RUN_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    app = ClientApp(mods=[update_compression_mod])

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        received = _numpy(msg.content["arrays"])
        return _replying_with(_moved(received, 1e-3, seed=ctx.node_id))(msg, ctx)

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        metrics = MetricRecord({"eval-loss": 0.1, "num-examples": 10})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    stores = {n: tmp_path / f"site-{n}" / "store.sqlite" for n in (1, 2)}
    for path in stores.values():
        path.parent.mkdir()
    grids = {codec: CompressionGrid(LoopbackGrid(app, stores, codec)) for codec in ("none", "int8")}

    # Execute: two rounds of Flower's own FedAvg loop through each grid
    results = {
        codec: FedAvg(min_train_nodes=2, min_available_nodes=2, min_evaluate_nodes=2).start(
            grid=grid, initial_arrays=_global_arrays(), num_rounds=2
        )
        for codec, grid in grids.items()
    }

    # Assert: both runs end with a whole model; the int8 uplink is under 26 % of float32
    for result in results.values():
        assert list(result.arrays) == list(_global_arrays())
    plain, packed = grids["none"].traffic, grids["int8"].traffic
    assert set(packed) == {(r, t) for r in ("1", "2") for t in ("train", "evaluate")}
    for server_round in ("1", "2"):
        train_plain, train_packed = plain[(server_round, "train")], packed[(server_round, "train")]
        assert train_packed.down_messages == train_packed.up_messages == 2
        assert train_packed.down_bytes == pytest.approx(train_plain.down_bytes, rel=0.05)
        assert train_packed.up_bytes <= 0.26 * train_plain.up_bytes
        assert train_packed.up_float32_bytes == pytest.approx(train_plain.up_bytes, rel=0.01)
        assert train_plain.up_ratio == 1.0
        evaluate_packed = packed[(server_round, "evaluate")]
        assert evaluate_packed.up_bytes == evaluate_packed.up_float32_bytes


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_federation_round_with_int8_updates_publishes_a_model(tmp_path: Path) -> None:
    # Prepare: two sites, real SuperLink and SuperNodes, compression on
    nodes = []
    for i, (site, rpm) in enumerate((("plant-north", 1797.0), ("plant-south", 1750.0))):
        store = tmp_path / site / "store.sqlite"
        store.parent.mkdir()
        seed_store(
            store, MachineProfile(rpm=rpm), ("normal", "inner_race"), windows_per_mode=30, seed=i
        )
        nodes.append(SiteNode(site, store))
    registry_dir = tmp_path / "registry"
    lines: list[str] = []

    # Execute
    with ProcessGroup(tmp_path / "logs") as group:
        federation = LocalFederation(group, tmp_path)
        federation.start(nodes)
        code = federation.run(
            app_dir(),
            {
                "num-server-rounds": 1,
                "local-epochs": 1,
                "min-sites": 2,
                "registry-dir": str(registry_dir),
                "update-compression": "int8",
            },
            on_line=lines.append,
        )

    # Assert: the round's model is published and loads; each site kept an update residual,
    # which only the compressing mod writes
    assert code == 0, "\n".join(lines[-30:])
    cards = FileRegistry(registry_dir).cards()
    assert [c.server_round for c in cards] == [1]
    assert cards[0].sites == ("plant-north", "plant-south")
    _, data = FileRegistry(registry_dir).load_verified(cards[0].version)
    assert OnnxClassifier(data).metadata.provenance.server_round == 1
    for node in nodes:
        assert [p.name for p in node.store_path.parent.glob("fl-residual-*.npz")] == [
            f"fl-residual-{cards[0].run_id}.npz"
        ]
