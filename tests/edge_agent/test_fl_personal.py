"""Per-site personalisation (edge_agent.fl_personal): the state file, the merge, the real
ClientApp handlers on seeded stores, and a real federation with local BatchNorm."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    RecordDict,
)

from aggregator.checkpoint import CheckpointStore
from aggregator.rounds import RoundLog
from edge_agent.client_app import app as client_app
from edge_agent.fl_personal import (
    PersonalState,
    extract_personal,
    finetune_head,
    load_personal,
    merge_personal,
    model_key,
    personal_keys,
    personal_path,
    save_personal,
)
from fedpm.demo import app_dir
from fedpm.federation import LocalFederation, SiteNode
from fedpm.procs import ProcessGroup
from fedpm.seed_store import seed_store
from models.errors import SignalError
from models.fl_config import DEFAULT_CLASSES, RunConfig
from models.network import NetworkConfig, build_model
from models.simulator import MachineProfile

RUN_ID = 17
# two sites that differ: another speed and resonance, and site-b has never seen a ball fault
SITES = {
    "site-a": (MachineProfile(), ("normal", "inner_race", "ball", "outer_race")),
    "site-b": (
        MachineProfile(rpm=1750.0, resonance_hz=2000.0),
        ("normal", "outer_race", "inner_race"),
    ),
}


def _state(mode: str, seed: int = 0, n_classes: int = 4) -> PersonalState:
    net = build_model(NetworkConfig(n_classes=n_classes), seed=seed)
    classes = DEFAULT_CLASSES[:n_classes]
    return PersonalState(mode, model_key(net, mode, classes), extract_personal(net, mode), 3, 7)


# ---------------------------------------------------------------- the state file and the merge


def test_personal_layers_per_mode() -> None:
    net = build_model()
    bn = personal_keys(net, "local-bn")
    head = personal_keys(net, "local-head")
    # five BatchNorm layers, each scale, shift, running mean and variance, batch count
    assert len(bn) == 25
    assert {k.rsplit(".", 1)[1] for k in bn} == {
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
    }
    assert all(k.startswith("features.") for k in bn)
    assert head == ("head.weight", "head.bias")
    with pytest.raises(ValueError, match="none"):
        personal_keys(net, "none")


def test_save_load_round_trip_is_atomic_and_clears_other_runs(tmp_path: Path) -> None:
    # Prepare: another run's state and a staging file a crash left behind
    (tmp_path / "fl-personal-run-1.npz").write_bytes(b"old")
    (tmp_path / ".fl-personal-run-2.npz.99.tmp").write_bytes(b"half")
    path = tmp_path / "fl-personal-run-2.npz"
    state = _state("local-bn")

    # Execute
    save_personal(path, state)
    loaded = load_personal(path, "local-bn", state.model_key)

    # Assert
    assert loaded is not None
    assert (loaded.mode, loaded.updates, loaded.server_round) == ("local-bn", 3, 7)
    assert list(loaded.arrays) == list(state.arrays)
    for name, value in state.arrays.items():
        assert loaded.arrays[name].dtype == value.dtype
        np.testing.assert_array_equal(loaded.arrays[name], value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fl-personal-run-2.npz"]


@pytest.mark.parametrize("change", ["shape", "mode", "classes"])
def test_incompatible_state_is_dropped_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: str
) -> None:
    # Prepare: a saved state that differs from what this run needs in one respect
    path = tmp_path / "fl-personal-x.npz"
    saved = {
        "shape": _state("local-head", n_classes=3),  # a 3-class head, the run has 4 classes
        "mode": _state("local-bn"),
        "classes": _state("local-head"),  # same shapes, other class names (below)
    }[change]
    save_personal(path, saved)
    classes = ("normal", "a", "b", "c") if change == "classes" else DEFAULT_CLASSES
    key = model_key(build_model(), "local-head", classes)

    # Execute
    with caplog.at_level(logging.WARNING, logger="edge_agent.fl_personal"):
        loaded = load_personal(path, "local-head", key)

    # Assert
    assert loaded is None
    assert "dropping personal state" in caplog.text


def test_unreadable_state_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "fl-personal-x.npz"
    path.write_bytes(b"PK\x03\x04 not a zip")
    with caplog.at_level(logging.WARNING, logger="edge_agent.fl_personal"):
        assert load_personal(path, "local-bn", "any") is None
    assert "unreadable personal state" in caplog.text
    assert load_personal(tmp_path / "absent.npz", "local-bn", "any") is None


def test_merge_replaces_only_the_personal_layers() -> None:
    # Prepare: the global model and a site's model with other weights
    global_net, site_net = build_model(seed=0), build_model(seed=1)
    with torch.no_grad():
        for module in site_net.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean += 1.0
                module.num_batches_tracked += 5
    before = {k: v.clone() for k, v in global_net.state_dict().items()}
    personal = extract_personal(site_net, "local-bn")

    # Execute
    merge_personal(global_net, personal)

    # Assert: the BatchNorm entries are the site's, every other entry the global model's
    after, site = global_net.state_dict(), site_net.state_dict()
    for name, value in after.items():
        expected = site[name] if name in personal else before[name]
        assert torch.equal(value, expected), name
        assert value.dtype == before[name].dtype


def test_merge_refuses_a_misfit_and_changes_nothing() -> None:
    net = build_model(seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    other = extract_personal(build_model(NetworkConfig(n_classes=3), seed=1), "local-head")
    bad = {**extract_personal(build_model(seed=1), "local-bn"), **other}
    with pytest.raises(ValueError, match=r"head\.weight"):
        merge_personal(net, bad)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_finetune_head_moves_only_the_head_and_fits_the_site() -> None:
    # Prepare: windows whose classes the untrained model cannot tell apart yet
    rng = np.random.default_rng(0)
    n, samples = 48, 2048
    y = np.repeat(np.arange(3), n // 3).astype(np.int64)
    t = np.arange(samples) / 12_000.0
    x = np.stack([np.sin(2 * np.pi * (500 + 1500 * k) * t) for k in y]).astype(np.float32)
    x = (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)[:, None, :]
    net = build_model(seed=0)
    body = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("head.")}
    head = net.head.weight.detach().clone()

    # Execute
    result = finetune_head(net, x, y, epochs=60, batch_size=16, learning_rate=0.05, seed=0)

    # Assert
    assert all(torch.equal(net.state_dict()[k], v) for k, v in body.items())
    assert not torch.equal(net.head.weight, head)
    assert result.accuracy == 1.0
    assert result.num_examples == n


def test_personal_path_per_node_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where simulations keep it

    def context(node_config: dict[str, object]) -> Context:
        return Context(9, 1, node_config, RecordDict(), {})  # type: ignore[arg-type]

    store = tmp_path / "site" / "store.sqlite"
    bn, named = (
        RunConfig(personalisation="local-bn"),
        RunConfig(personalisation="local-bn", run_name="line-3"),
    )
    # no personalisation: no file at all, whatever the node
    assert personal_path(context({}), RunConfig()) is None
    # a site: beside its store, named by the run (the run-name, so a resumed run keeps it)
    assert personal_path(context({"store-path": str(store)}), bn) == (
        store.parent.resolve() / "fl-personal-run-9.npz"
    )
    assert personal_path(context({"store-path": str(store)}), named) == (
        store.parent.resolve() / "fl-personal-line-3.npz"
    )
    # a virtual node of Flower's simulation: a folder of its own per run and partition
    sim = personal_path(context({"partition-id": 2, "num-partitions": 4}), bn)
    assert sim is not None
    assert sim.parent.is_dir()
    assert sim.parent == tmp_path / "tmp" / "fedpm-personal" / "run-9" / "partition-2"
    with pytest.raises(ValueError, match="store-path"):
        personal_path(context({}), bn)


def test_run_config_refuses_unknown_personalisation() -> None:
    assert RunConfig.from_run_config({"personalisation": "local-bn"}).personalisation == "local-bn"
    with pytest.raises(SignalError, match="personalisation must be one of none, local-bn"):
        RunConfig.from_run_config({"personalisation": "fedbn"})
    with pytest.raises(SignalError, match="personal-head-epochs must be >= 1"):
        RunConfig.from_run_config({"personal-head-epochs": 0})
    with pytest.raises(SignalError, match="personal-head-learning-rate"):
        RunConfig(personal_head_learning_rate=1.5)


def test_round_log_keeps_global_and_personal_accuracy_per_site() -> None:
    log = RoundLog(2)
    log.site_metrics = {
        "site-b": {"eval-accuracy": 0.5, "personal-eval-accuracy": 0.75},
        "site-a": {"eval-accuracy": 0.8, "personal-eval-accuracy": 0.9},
        "site-c": {"eval-accuracy": 0.7},  # no personalised model
    }
    restored = RoundLog.from_dict(json.loads(json.dumps(log.to_dict())))
    assert restored.personal_accuracy() == {"site-a": (0.8, 0.9), "site-b": (0.5, 0.75)}


# ---------------------------------------------------------------- the real ClientApp handlers


def _message(arrays: ArrayRecord, server_round: int, message_type: str) -> Message:
    """A message as a SuperNode receives it: its id is its content hash, set by the grid."""
    content = RecordDict({"config": ConfigRecord({"server-round": server_round}), "arrays": arrays})
    metadata = Metadata(
        run_id=RUN_ID,
        message_id="",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    msg = Message(metadata=metadata, content=content)  # type: ignore[call-overload]
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


def _context(store: Path, site: str, mode: str) -> Context:
    """A fresh Context, as each flwr-clientapp process gets one."""
    return Context(
        run_id=RUN_ID,
        node_id=1,
        node_config={"store-path": str(store), "site-id": site},
        state=RecordDict(),
        run_config={"personalisation": mode, "local-epochs": 1},
    )


def _fedavg(replies: list[Message]) -> ArrayRecord:
    """FedAvg of the replies' arrays by num-examples, in the global dtypes."""
    counts = [float(r.content["metrics"]["num-examples"]) for r in replies]  # type: ignore[arg-type]
    arrays = [{k: v.numpy() for k, v in r.content["arrays"].items()} for r in replies]
    out = ArrayRecord()
    for name, first in arrays[0].items():
        mean = sum(a[name].astype(np.float64) * c for a, c in zip(arrays, counts, strict=True))
        value = mean / sum(counts)
        if first.dtype.kind in "iu":
            value = np.rint(value)
        out[name] = Array(np.ascontiguousarray(value.astype(first.dtype)))
    return out


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("personal-stores")
    out = {}
    for i, (site, (profile, modes)) in enumerate(SITES.items()):
        store = root / site / "store.sqlite"
        store.parent.mkdir()
        seed_store(store, profile, modes, windows_per_mode=16, seed=10 * i)
        out[site] = store
    return out


def _clear_states(stores: dict[str, Path]) -> None:
    for store in stores.values():
        for path in store.parent.glob("fl-personal-*.npz"):
            path.unlink()


def _round(
    stores: dict[str, Path], mode: str, server_round: int, arrays: ArrayRecord
) -> tuple[dict[str, dict[str, float]], ArrayRecord]:
    """One FedAvg round through the real ClientApp: eval metrics by site, the new global."""
    train = [
        client_app(_message(arrays, server_round, MessageType.TRAIN), _context(store, site, mode))
        for site, store in stores.items()
    ]
    assert not any(m.has_error() for m in train), [m.error for m in train if m.has_error()]
    arrays = _fedavg(train)
    metrics = {}
    for site, store in stores.items():
        reply = client_app(
            _message(arrays, server_round, MessageType.EVALUATE), _context(store, site, mode)
        )
        assert not reply.has_error(), reply.error
        record = reply.content["metrics"]
        metrics[site] = {k: float(v) for k, v in record.items()}  # type: ignore[arg-type]
    return metrics, arrays


@pytest.mark.parametrize("mode", ["local-bn", "local-head"])
def test_handlers_keep_reuse_and_evaluate_a_personal_model(
    stores: dict[str, Path], mode: str
) -> None:
    # Prepare
    _clear_states(stores)
    cfg = RunConfig.from_run_config({"personalisation": mode})
    net = build_model(cfg.network)
    key = model_key(net, mode, cfg.class_names)
    path = {site: store.parent / f"fl-personal-run-{RUN_ID}.npz" for site, store in stores.items()}
    arrays = ArrayRecord(build_model(seed=0).state_dict())

    # Execute: round 1, then round 2 on the files round 1 left
    round1, arrays = _round(stores, mode, 1, arrays)
    states1 = {site: load_personal(p, mode, key) for site, p in path.items()}
    round2, _ = _round(stores, mode, 2, arrays)

    # Assert: round 1 created a state per site...
    for site, state in states1.items():
        assert state is not None, site
        assert (state.updates, state.server_round) == (1, 1)
        assert set(state.arrays) == set(personal_keys(net, mode))
        assert round1[site]["personal-updates"] == 1.0
    # ...which round 2 loaded and carried on (its count goes on from round 1's)
    for site, p in path.items():
        state = load_personal(p, mode, key)
        assert state is not None
        assert (state.updates, state.server_round) == (2, 2)
        assert round2[site]["personal-updates"] == 2.0
        for name in ("eval-accuracy", "personal-eval-accuracy"):
            assert 0.0 <= round2[site][name] <= 1.0
        # the personalised model is another model than the global one
        assert round2[site]["personal-eval-loss"] != round2[site]["eval-loss"]
    # on the site unlike the global mix, the personalised model does at least as well
    b = round2["site-b"]
    assert b["personal-eval-accuracy"] >= b["eval-accuracy"]
    if mode == "local-head":  # a head tuned on the site's own windows fits them better
        assert b["personal-eval-loss"] < b["eval-loss"]


def test_handlers_without_personalisation_keep_nothing(stores: dict[str, Path]) -> None:
    _clear_states(stores)
    metrics, _ = _round(stores, "none", 1, ArrayRecord(build_model(seed=0).state_dict()))
    assert not [p for s in stores.values() for p in s.parent.glob("fl-personal-*")]
    assert not any(k.startswith("personal-") for m in metrics.values() for k in m)


def test_handler_replaces_a_state_of_another_model(
    stores: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a head state of a 3-class model, where this run's model has 4 classes
    _clear_states(stores)
    store = stores["site-b"]
    path = store.parent / f"fl-personal-run-{RUN_ID}.npz"
    save_personal(path, _state("local-head", n_classes=3))
    arrays = ArrayRecord(build_model(seed=0).state_dict())

    # Execute
    with caplog.at_level(logging.WARNING, logger="edge_agent.fl_personal"):
        reply = client_app(
            _message(arrays, 1, MessageType.EVALUATE), _context(store, "site-b", "local-head")
        )

    # Assert: no crash, a log line, and a fresh state for this model in its place
    assert not reply.has_error(), reply.error
    assert "dropping personal state" in caplog.text
    assert reply.content["metrics"]["personal-updates"] == 1.0
    cfg = RunConfig()
    state = load_personal(
        path, "local-head", model_key(build_model(), "local-head", cfg.class_names)
    )
    assert state is not None
    assert state.arrays["head.bias"].shape == (4,)


# ---------------------------------------------------------------- a real federation


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_federation_with_local_batchnorm_logs_personal_metrics_per_site(tmp_path: Path) -> None:
    # Prepare
    nodes = []
    for i, (site, (profile, modes)) in enumerate(SITES.items()):
        store = tmp_path / site / "store.sqlite"
        store.parent.mkdir()
        seed_store(store, profile, modes, windows_per_mode=12, seed=10 * i)
        nodes.append(SiteNode(site, store))
    lines: list[str] = []

    # Execute
    with ProcessGroup(tmp_path / "logs") as group:
        federation = LocalFederation(group, tmp_path)
        federation.start(nodes)
        code = federation.run(
            app_dir(),
            {
                "num-server-rounds": 2,
                "min-sites": 2,
                "local-epochs": 1,
                "personalisation": "local-bn",
                "registry-dir": str(tmp_path / "registry"),
                "checkpoint-dir": str(tmp_path / "checkpoints"),
                "run-name": "personal",
            },
            on_line=lines.append,
        )

    # Assert: the run's history holds each site's global and personalised accuracy per round
    assert code == 0, "\n".join(lines[-30:])
    ckpt = CheckpointStore(tmp_path / "checkpoints" / "personal").latest()
    assert ckpt is not None
    assert sorted(ckpt.round_logs) == [1, 2]
    for server_round, log in ckpt.round_logs.items():
        table = log.personal_accuracy()
        assert sorted(table) == sorted(SITES), server_round
        for site, (global_acc, personal_acc) in table.items():
            assert 0.0 <= global_acc <= 1.0
            assert 0.0 <= personal_acc <= 1.0
            # each site's BatchNorm state was saved in round 1 and reused in round 2
            assert log.site_metrics[site]["personal-updates"] == float(server_round)
    # the state lies beside each site's store, under the run's name
    for node in nodes:
        assert (node.store_path.parent / "fl-personal-personal.npz").exists()
