"""Every Flower strategy FedPM offers, under the guards, on real WDCNN weights and Messages."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAdam
from flwr.supercore.task_identity import TaskIdentity

from aggregator.checkpoint import to_record
from aggregator.guards import GuardConfig
from aggregator.privacy import with_dp
from aggregator.server_app import guard_config
from aggregator.strategies import build_strategy, load_strategy_state, strategy_state
from aggregator.strategy import GuardedStrategy
from models.errors import SignalError
from models.fl_config import STRATEGIES, RunConfig
from models.network import build_model

Arrays = dict[str, np.ndarray]


@pytest.fixture(autouse=True)
def _task_identity() -> Iterator[None]:
    # Flower stamps messages with the identity of the process's task; a ServerApp process has
    # one, a test process must set it
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def _global() -> Arrays:
    net = build_model(RunConfig().network, seed=0)
    return {k: v.numpy() for k, v in ArrayRecord(net.state_dict()).items()}


def _honest(g: Arrays, seed: int, scale: float = 0.01) -> Arrays:
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in g.items():
        if np.issubdtype(v.dtype, np.floating):
            out[k] = (v + scale * rng.standard_normal(v.shape)).astype(v.dtype)
        else:
            out[k] = np.asarray(v + 3)
    return out


def _reply(node: int, arrays: Arrays | None, n: float = 100, site: str | None = None) -> Message:
    ins = Message(
        RecordDict({"config": ConfigRecord()}), dst_node_id=node, message_type=MessageType.TRAIN
    )
    content = RecordDict(
        {
            "metrics": MetricRecord({"num-examples": n, "train-loss": 0.5}),
            "site": ConfigRecord({"site-id": site or f"site-{node}"}),
        }
    )
    if arrays is not None:
        content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(content, reply_to=ins)


def _guarded(cfg: RunConfig, sampled: int, g: Arrays, offset: int = 0) -> GuardedStrategy:
    strategy = GuardedStrategy(build_strategy(cfg), guard_config(cfg), round_offset=offset)
    strategy.begin_round(to_record(g))
    # FedOpt strategies remember the arrays they sent in configure_train
    if isinstance(strategy.inner, FedAdam):
        strategy.inner.current_arrays = {k: v.copy() for k, v in g.items()}
    strategy.round_log(strategy.absolute(1)).sampled = sampled
    return strategy


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_aggregates_only_the_valid_replies(name: str) -> None:
    # Prepare: seven honest sites, one sending NaN, one boosting its update 1000x, one failing
    cfg = RunConfig(strategy=name, min_sites=7, krum_byzantine=1, krum_select=3)
    g = _global()
    honest = [_honest(g, seed) for seed in range(7)]
    poisoned = _honest(g, 50)
    poisoned["fc.weight" if "fc.weight" in g else next(iter(g))].flat[0] = np.nan
    boosted = {
        k: np.asarray(g[k] + 1000 * (v - g[k])).astype(v.dtype) for k, v in _honest(g, 51).items()
    }
    replies = [_reply(i + 1, a) for i, a in enumerate(honest)]
    replies += [_reply(20, poisoned, site="nan-site"), _reply(21, boosted, site="boost-site")]
    replies.append(Message(Error(code=1, reason="site crashed"), reply_to=replies[0]))
    strategy = _guarded(cfg, sampled=10, g=g)

    # Execute
    arrays, metrics = strategy.aggregate_train(1, replies)

    # Assert
    assert arrays is not None
    assert metrics is not None
    log = strategy.rounds[1]
    assert set(log.rejected) == {"train:nan-site", "train:boost-site"}
    assert log.failures == 1
    assert len(log.sites) == 7
    assert not log.skipped
    assert log.aggregated["guard-accepted"] == 7
    assert log.aggregated["guard-rejected"] == 2
    stacked = {k: np.stack([h[k] for h in honest]) for k in g}
    for k, ref in g.items():
        out = arrays[k].numpy()
        assert out.dtype == ref.dtype
        assert out.shape == ref.shape
        assert np.isfinite(out.astype(np.float64)).all()
        if name != "fedadam" and np.issubdtype(ref.dtype, np.floating):
            # every robust rule and the mean stay inside the honest updates' range
            assert (out >= stacked[k].min(0) - 1e-6).all()
            assert (out <= stacked[k].max(0) + 1e-6).all()


def test_too_few_valid_replies_skip_the_round() -> None:
    # Prepare: four sites sampled, one valid reply, the rest broken
    cfg = RunConfig(min_reply_fraction=0.5)
    g = _global()
    bad = _honest(g, 1)
    bad[next(iter(g))] = bad[next(iter(g))][..., :1]  # wrong shape
    replies = [_reply(1, _honest(g, 0)), _reply(2, bad), _reply(3, None)]
    strategy = _guarded(cfg, sampled=4, g=g)

    # Execute
    arrays, metrics = strategy.aggregate_train(1, replies)

    # Assert: Strategy.start keeps the global model when aggregate_train returns None
    assert (arrays, metrics) == (None, None)
    log = strategy.rounds[1]
    assert log.skipped
    assert "1 valid replies of 4 sampled" in log.skip_reason
    assert log.aggregated["round-skipped"] == 1.0
    assert "shaped" in log.rejected["train:site-2"]


def test_a_site_claiming_many_examples_weighs_no_more_than_the_cap() -> None:
    # Prepare
    cfg = RunConfig(max_examples_per_site=200)
    g = _global()
    a, b = _honest(g, 0), _honest(g, 1)
    strategy = _guarded(cfg, sampled=2, g=g)

    # Execute
    arrays, _ = strategy.aggregate_train(1, [_reply(1, a, n=200), _reply(2, b, n=10**9)])

    # Assert: with both at the cap, FedAvg is the plain mean
    assert arrays is not None
    key = next(k for k, v in g.items() if v.ndim > 1)
    np.testing.assert_allclose(arrays[key].numpy(), (a[key] + b[key]) / 2, rtol=1e-5, atol=1e-7)
    log = strategy.rounds[1]
    assert log.clipped == ["train:site-2"]
    assert log.site_metrics["site-2"]["train-examples"] == 200
    assert log.site_metrics["site-2"]["train-examples-claimed"] == 1e9


def test_round_offset_numbers_rounds_on_and_fedadam_state_resumes() -> None:
    # Prepare: an uninterrupted FedAdam for rounds 1-2, and one rebuilt after round 1 from
    # the saved state, as a resumed server is
    cfg = RunConfig(strategy="fedadam")
    g0 = _global()
    r1 = [_reply(1, _honest(g0, 0)), _reply(2, _honest(g0, 1))]
    first = _guarded(cfg, sampled=2, g=g0)
    g1_rec, _ = first.aggregate_train(1, r1)
    assert g1_rec is not None
    g1 = {k: v.numpy() for k, v in g1_rec.items()}
    saved = strategy_state(first.inner)
    r2 = [_reply(1, _honest(g1, 2)), _reply(2, _honest(g1, 3))]
    r2_again = [_reply(1, _honest(g1, 2)), _reply(2, _honest(g1, 3))]
    first.begin_round(to_record(g1))
    first.inner.current_arrays = {k: v.copy() for k, v in g1.items()}  # type: ignore[union-attr]
    first.round_log(2).sampled = 2

    # Execute
    uninterrupted, _ = first.aggregate_train(2, r2)
    resumed = _guarded(cfg, sampled=2, g=g1, offset=1)
    load_strategy_state(resumed.inner, saved)
    resumed_rec, _ = resumed.aggregate_train(1, r2_again)

    # Assert: same bytes, logged as round 2
    assert set(saved) == {f"{m}/{k}" for m in ("m_t", "v_t") for k in g0}
    assert uninterrupted is not None
    assert resumed_rec is not None
    for k in g0:
        assert uninterrupted[k].numpy().tobytes() == resumed_rec[k].numpy().tobytes()
    assert list(resumed.rounds) == [2]


def test_stateless_strategy_refuses_optimiser_state() -> None:
    with pytest.raises(ValueError, match="another strategy"):
        load_strategy_state(build_strategy(RunConfig()), {"m_t/w": np.zeros(2)})


def test_evaluation_replies_are_guarded_too() -> None:
    # Prepare: one evaluation reply with other metric names would make Flower raise
    strategy = _guarded(RunConfig(max_examples_per_site=50), sampled=3, g=_global())
    ok = [_reply(1, None, n=40), _reply(2, None, n=10**6)]
    ins = Message(
        RecordDict({"config": ConfigRecord()}), dst_node_id=3, message_type=MessageType.EVALUATE
    )
    odd = Message(
        RecordDict({"metrics": MetricRecord({"num-examples": 10, "other": 1.0})}), reply_to=ins
    )

    # Execute
    metrics = strategy.aggregate_evaluate(1, [*ok, odd])

    # Assert: mean of train-loss weighted 40:50 (the second site clipped to 50)
    assert metrics is not None
    assert metrics["train-loss"] == pytest.approx(0.5)
    log = strategy.rounds[1]
    assert log.site_metrics["site-2"]["eval-examples"] == 50
    assert "metric names" in log.rejected["eval:node-3"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "fedsgd"}, "strategy must be one of"),
        ({"strategy": "fedprox", "proximal_mu": 0.0}, "proximal-mu > 0"),
        ({"strategy": "bulyan", "min_sites": 6, "krum_byzantine": 1}, "min-sites >= 7"),
        ({"strategy": "krum", "min_sites": 2}, "min-sites >= 3"),
        ({"min_reply_fraction": 0.0}, "min-reply-fraction"),
        ({"max_examples_per_site": 0}, "max-examples-per-site"),
        ({"trimmed_fraction": 0.5}, "trimmed-fraction"),
        ({"adam_beta2": 1.0}, "adam-beta"),
        ({"run_name": "../escape"}, "run-name"),
    ],
)
def test_run_config_refuses_bad_strategy_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SignalError, match=message):
        RunConfig(**kwargs)  # type: ignore[arg-type]


def test_run_config_parses_strategy_keys_from_flower() -> None:
    # Prepare / Execute
    cfg = RunConfig.from_run_config(
        {"strategy": "fedtrimmedavg", "trimmed-fraction": "0.1", "min-reply-fraction": 1}
    )

    # Assert
    assert cfg.strategy == "fedtrimmedavg"
    assert cfg.trimmed_fraction == 0.1
    assert guard_config(cfg) == GuardConfig(
        max_examples=100_000, norm_outlier_mads=5.0, min_reply_fraction=1.0
    )


def test_state_and_weight_key_are_found_under_a_privacy_wrapper() -> None:
    # Prepare: Flower's DP wrappers keep the strategy they wrap as `.strategy`
    adam = FedAdam(weighted_by_key="windows")
    adam.m_t, adam.v_t = {"w": np.ones(2)}, {"w": np.full(2, 2.0)}
    wrapped = DifferentialPrivacyClientSideFixedClipping(
        adam, noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=2
    )

    # Execute
    state = strategy_state(wrapped)
    fresh = DifferentialPrivacyClientSideFixedClipping(
        FedAdam(), noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=2
    )
    load_strategy_state(fresh, state)

    # Assert
    assert sorted(state) == ["m_t/w", "v_t/w"]
    assert GuardedStrategy(wrapped, GuardConfig()).weight_key == "windows"
    assert fresh.strategy.v_t is not None  # type: ignore[attr-defined]
    np.testing.assert_array_equal(fresh.strategy.v_t["w"], [2.0, 2.0])  # type: ignore[attr-defined]


def test_privacy_rounds_spent_survive_a_restart() -> None:
    # Prepare: a DP run (aggregator.privacy) that has counted two rounds
    cfg = RunConfig(strategy="fedprox", dp_noise_multiplier=1.0)
    before = with_dp(build_strategy(cfg), cfg)
    before.privacy.compose(1.0)  # type: ignore[attr-defined]
    before.privacy.compose(0.5)  # type: ignore[attr-defined]

    # Execute
    state = strategy_state(before)
    after = with_dp(build_strategy(cfg), cfg)
    load_strategy_state(after, state)

    # Assert
    assert after.privacy.noise_multipliers == [1.0, 0.5]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="differential-privacy"):
        load_strategy_state(build_strategy(RunConfig()), state)
