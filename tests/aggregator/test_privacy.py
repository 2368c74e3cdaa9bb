"""Differential privacy: the epsilon accountant, the server wrapper and the client clipping mod."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from scipy.stats import norm

from aggregator.privacy import (
    DpFixedClipping,
    DpSettings,
    GaussianAccountant,
    exact_epsilon,
    gaussian_delta,
    rdp_epsilon,
    repair_noised,
    with_dp,
)
from edge_agent.fl_privacy import DP_REFUSED_CODE, dp_clipping_mod
from models.errors import SignalError
from models.fl_config import RunConfig

# Google's dp_accounting 0.6.0: RdpAccountant() (default orders), compose(GaussianDpEvent(z), T),
# get_epsilon(delta); computed once with that library, which FedPM does not depend on.
DP_ACCOUNTING_REFERENCE = [
    ([1.0], 1e-5, 4.728507067217623),
    ([1.0] * 10, 1e-5, 19.05359753163139),
    ([0.5] * 50, 1e-5, 166.03553359954904),
    ([2.0] * 100, 1e-5, 35.08175401905626),
    ([4.0] * 100, 1e-5, 14.132226163159334),
    ([1.1] * 3, 1e-5, 8.039116966222146),
    ([1.0] + [2.0] * 4, 1e-6, 7.766237903487095),
]


@pytest.fixture(autouse=True)
def _task_identity() -> Iterator[None]:
    """Messages outside a running app need a run id (Flower sets it inside a real run)."""
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


@pytest.mark.parametrize(("multipliers", "delta", "expected"), DP_ACCOUNTING_REFERENCE)
def test_rdp_epsilon_matches_google_dp_accounting(
    multipliers: list[float], delta: float, expected: float
) -> None:
    # Execute / Assert
    assert rdp_epsilon(multipliers, delta) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("multipliers", "delta", "_"), DP_ACCOUNTING_REFERENCE)
def test_exact_epsilon_is_tight_and_below_the_rdp_bound(
    multipliers: list[float], delta: float, _: float
) -> None:
    # Execute
    eps = exact_epsilon(multipliers, delta)

    # Assert: the Gaussian mechanism's privacy profile gives exactly delta there...
    mu = math.sqrt(sum(1 / z**2 for z in multipliers))
    assert gaussian_delta(mu, eps) == pytest.approx(delta, rel=1e-6)
    # ...and RDP, a bound, never promises less
    assert 0 < eps <= rdp_epsilon(multipliers, delta)


def test_exact_epsilon_meets_the_classical_gaussian_mechanism_bound() -> None:
    # Prepare: Dwork and Roth (2014), Thm A.1: sigma = sqrt(2 ln(1.25/delta)) / eps gives
    # (eps, delta)-DP for eps < 1; the exact epsilon of that sigma can only be smaller
    delta = 1e-5
    for target in (0.1, 0.5, 0.9):
        z = math.sqrt(2 * math.log(1.25 / delta)) / target

        # Execute / Assert
        assert exact_epsilon([z], delta) < target


def test_gaussian_profile_at_zero_is_the_total_variation() -> None:
    # Execute / Assert: delta(0) = Phi(mu/2) - Phi(-mu/2) (Dong, Roth and Su 2022)
    for mu in (0.1, 1.0, 3.0):
        assert gaussian_delta(mu, 0.0) == pytest.approx(norm.cdf(mu / 2) - norm.cdf(-mu / 2))


def test_more_rounds_or_less_noise_spend_more() -> None:
    # Execute
    by_rounds = [exact_epsilon([1.0] * t, 1e-5) for t in (1, 5, 25)]
    by_noise = [exact_epsilon([z] * 10, 1e-5) for z in (4.0, 2.0, 1.0)]

    # Assert
    assert by_rounds == sorted(by_rounds)
    assert by_noise == sorted(by_noise)
    assert exact_epsilon([], 1e-5) == rdp_epsilon([], 1e-5) == 0.0


def test_accountant_composes_rounds_of_different_noise() -> None:
    # Prepare
    accountant = GaussianAccountant(1e-6)

    # Execute
    for z in (1.0, 2.0, 2.0, 2.0, 2.0):
        accountant.compose(z)
    spent = accountant.spent()

    # Assert: the last reference case, rounds of unequal noise
    assert spent.epsilon_rdp == pytest.approx(7.766237903487095, rel=1e-9)
    assert spent.epsilon == pytest.approx(exact_epsilon([1.0] + [2.0] * 4, 1e-6))
    assert (spent.delta, spent.rounds) == (1e-6, 5)
    with pytest.raises(ValueError, match="positive"):
        accountant.compose(0.0)
    assert accountant.spent().rounds == 5


@pytest.mark.parametrize(
    ("multipliers", "delta", "match"),
    [([1.0], 0.0, "delta"), ([1.0], 1.0, "delta"), ([0.0], 1e-5, "positive"),
     ([math.inf], 1e-5, "positive"), ([-1.0], 1e-5, "positive")],
)  # fmt: skip
def test_accountant_refuses_meaningless_input(
    multipliers: list[float], delta: float, match: str
) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        rdp_epsilon(multipliers, delta)
    with pytest.raises(ValueError, match=match):
        exact_epsilon(multipliers, delta)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"noise_multiplier": -1.0}, "noise-multiplier"), ({"clipping_norm": 0.0}, "clipping"),
     ({"clipping_norm": math.nan}, "clipping"), ({"delta": 0.0}, "dp-delta")],
)  # fmt: skip
def test_dp_settings_refuse_meaningless_values(kwargs: dict[str, float], match: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        DpSettings(**kwargs)


def _instruction(config: ConfigRecord, size: int, kind: str = MessageType.TRAIN) -> Message:
    content = RecordDict({"arrays": ArrayRecord([np.zeros(size)]), "config": config})
    return Message(content, dst_node_id=7, message_type=kind)


def _reply(ins: Message, values: np.ndarray, examples: int) -> Message:
    content = RecordDict(
        {"arrays": ArrayRecord([values]), "metrics": MetricRecord({"num-examples": examples})}
    )
    return Message(content, reply_to=ins)


def test_wrapper_adds_calibrated_noise_and_reports_epsilon_per_round() -> None:
    # Prepare: two sites of equal weight, z = 1, C = 0.5, n = 2: noise sd z*C/n = 0.25
    np.random.seed(3)  # Flower's noise draws from numpy's global generator
    size = 20_000
    dp = DpFixedClipping(FedAvg(), DpSettings(1.0, 0.5, 1e-5), num_sites=2)
    ins = _instruction(ConfigRecord(), size)
    replies = [_reply(ins, np.full(size, 0.2), 10), _reply(ins, np.full(size, 0.4), 10)]

    # Execute
    results = [dp.aggregate_train(server_round, replies) for server_round in (1, 2)]
    arrays, metrics = results[-1]
    assert arrays is not None
    assert metrics is not None
    spent = [m["dp-epsilon"] for _, m in results if m is not None]
    (noisy,) = arrays.to_numpy_ndarrays()

    # Assert: the mean is there, with the noise the settings call for
    assert float(np.mean(noisy)) == pytest.approx(0.3, abs=0.01)
    assert float(np.std(noisy)) == pytest.approx(0.25, rel=0.03)
    assert spent == pytest.approx([exact_epsilon([1.0], 1e-5), exact_epsilon([1.0] * 2, 1e-5)])
    assert metrics["dp-epsilon-rdp"] == pytest.approx(rdp_epsilon([1.0] * 2, 1e-5))
    assert dp.privacy_spent().rounds == 2


def test_unequal_site_weights_spend_more_epsilon() -> None:
    # Prepare: one site holds 3/4 of the examples, so it moves the mean 1.5 times as far
    dp = DpFixedClipping(FedAvg(), DpSettings(1.0, 1.0, 1e-5), num_sites=2)
    ins = _instruction(ConfigRecord(), 8)
    replies = [_reply(ins, np.ones(8), 30), _reply(ins, np.ones(8), 10)]

    # Execute
    _, metrics = dp.aggregate_train(1, replies)

    # Assert
    assert metrics is not None
    assert metrics["dp-noise-multiplier-effective"] == pytest.approx(1.0 / 1.5)
    assert metrics["dp-epsilon"] == pytest.approx(exact_epsilon([1.0 / 1.5], 1e-5))
    assert float(metrics["dp-epsilon"]) > exact_epsilon([1.0], 1e-5)  # type: ignore[arg-type]


def test_a_round_not_released_spends_nothing() -> None:
    # Prepare: one site failed, so Flower's wrapper releases no aggregate
    dp = DpFixedClipping(FedAvg(), DpSettings(1.0, 1.0, 1e-5), num_sites=2)
    ins = _instruction(ConfigRecord(), 8)
    replies = [_reply(ins, np.ones(8), 10), Message(Error(1, "site crashed"), reply_to=ins)]

    # Execute
    arrays, _ = dp.aggregate_train(1, replies)

    # Assert
    assert arrays is None
    assert dp.privacy_spent().rounds == 0
    assert dp.privacy_spent().epsilon == 0.0


def test_wrapper_needs_noise() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="positive dp-noise-multiplier"):
        DpFixedClipping(FedAvg(), DpSettings(0.0), num_sites=2)


def _context(node_config: dict[str, object] | None = None) -> Context:
    return Context(
        run_id=1,
        node_id=7,
        node_config=node_config or {},  # type: ignore[arg-type]
        state=RecordDict(),
        run_config={},
    )


def _trainer(delta: np.ndarray, calls: list[Message]) -> object:
    def train(msg: Message, _: Context) -> Message:
        calls.append(msg)
        (received,) = msg.content.array_records["arrays"].to_numpy_ndarrays()
        return _reply(msg, received + delta, 10)

    return train


def test_mod_clips_the_update_to_the_norm_the_server_asked_for() -> None:
    # Prepare: an update of L2 norm 5 and a clipping norm of 0.5
    ins = _instruction(ConfigRecord({"clipping_norm": 0.5}), 2)
    calls: list[Message] = []
    train = _trainer(np.array([3.0, 4.0]), calls)

    # Execute
    reply = dp_clipping_mod(ins, _context(), train)  # type: ignore[arg-type]

    # Assert: same direction, norm 0.5
    (update,) = reply.content.array_records["arrays"].to_numpy_ndarrays()
    np.testing.assert_allclose(update, [0.3, 0.4])
    assert len(calls) == 1


def test_mod_passes_updates_through_when_dp_is_off_or_not_training() -> None:
    # Prepare
    calls: list[Message] = []
    train = _trainer(np.array([3.0, 4.0]), calls)
    plain = _instruction(ConfigRecord(), 2)
    evaluate = _instruction(ConfigRecord({"clipping_norm": -1.0}), 2, MessageType.EVALUATE)

    # Execute
    replies = [dp_clipping_mod(m, _context(), train) for m in (plain, evaluate)]  # type: ignore[arg-type]

    # Assert
    for reply in replies:
        (update,) = reply.content.array_records["arrays"].to_numpy_ndarrays()
        np.testing.assert_allclose(update, [3.0, 4.0])
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("config", "node_config", "reason"),
    [({}, {"dp-required": True}, "dp-required"), ({"clipping_norm": 0.0}, {}, "positive")],
)
def test_mod_refuses_to_send_unclipped_weights_when_it_must_not(
    config: dict[str, float], node_config: dict[str, object], reason: str
) -> None:
    # Prepare
    calls: list[Message] = []
    train = _trainer(np.array([3.0, 4.0]), calls)

    # Execute
    reply = dp_clipping_mod(
        _instruction(ConfigRecord(config), 2),  # type: ignore[arg-type]
        _context(node_config),
        train,  # type: ignore[arg-type]
    )

    # Assert: an error reply, no weights, and the site did not even train
    assert reply.has_error()
    assert reply.error.code == DP_REFUSED_CODE
    assert reason in str(reply.error.reason)
    assert calls == []


def test_run_config_turns_dp_on_and_refuses_what_it_cannot_account() -> None:
    # Prepare
    off = RunConfig.from_run_config({})
    on = RunConfig.from_run_config(
        {"dp-noise-multiplier": 1.2, "dp-clipping-norm": 0.3, "dp-delta": 1e-6, "min-sites": 3}
    )
    strategy = FedAvg()

    # Execute
    plain, private = with_dp(strategy, off), with_dp(strategy, on)

    # Assert
    assert plain is strategy
    assert isinstance(private, DpFixedClipping)
    assert (private.noise_multiplier, private.clipping_norm) == (1.2, 0.3)
    assert (private.num_sampled_clients, private.privacy.delta) == (3, 1e-6)
    with pytest.raises(SignalError, match="needs strategy fedavg or fedprox"):
        RunConfig.from_run_config({"dp-noise-multiplier": 1.0, "strategy": "fedmedian"})
    with pytest.raises(SignalError, match="dp-clipping-norm"):
        RunConfig.from_run_config({"dp-clipping-norm": -1.0})
    with pytest.raises(SignalError, match="update-compression"):
        RunConfig.from_run_config({"dp-noise-multiplier": 1.0, "update-compression": "int8"})


def test_mod_sends_integer_counters_back_as_received_and_clips_the_rest() -> None:
    # Prepare: BatchNorm's batch counter moved by 40 batches; the weights by a norm of 5
    received = {"w": Array(np.zeros(2)), "bn.num_batches_tracked": Array(np.array(7))}
    ins = Message(
        RecordDict(
            {"arrays": ArrayRecord(received), "config": ConfigRecord({"clipping_norm": 1.0})}
        ),
        dst_node_id=7,
        message_type=MessageType.TRAIN,
    )

    def train(msg: Message, _: Context) -> Message:
        trained = {"w": Array(np.array([3.0, 4.0])), "bn.num_batches_tracked": Array(np.array(47))}
        return Message(RecordDict({"arrays": ArrayRecord(trained)}), reply_to=msg)

    # Execute
    reply = dp_clipping_mod(ins, _context(), train)

    # Assert: the counter tells nothing about the site's data, and the whole budget went to w
    sent = reply.content.array_records["arrays"]
    assert int(sent["bn.num_batches_tracked"].numpy()) == 7
    np.testing.assert_allclose(sent["w"].numpy(), [0.6, 0.8])


def test_noised_model_is_put_back_into_its_domain() -> None:
    # Prepare: noise made a variance and a counter negative
    noised = ArrayRecord(
        {
            "bn.running_var": Array(np.array([-0.2, 0.5], dtype=np.float32)),
            "bn.running_mean": Array(np.array([-0.2, 0.5], dtype=np.float32)),
            "bn.num_batches_tracked": Array(np.array(-1)),
        }
    )

    # Execute
    repaired = repair_noised(noised)

    # Assert: only what cannot be negative changed, dtypes kept
    np.testing.assert_allclose(repaired["bn.running_var"].numpy(), [1e-3, 0.5])
    np.testing.assert_allclose(repaired["bn.running_mean"].numpy(), [-0.2, 0.5])
    assert int(repaired["bn.num_batches_tracked"].numpy()) == 0
    assert repaired["bn.running_var"].numpy().dtype == np.float32
    assert list(repaired.keys()) == list(noised.keys())
