"""Flower's own strategies, chosen by the run config's ``strategy`` key.

No strategy is forked: each is Flower's class with FedPM's sampling settings and the run
config's parameters. ``aggregator.strategy.GuardedStrategy`` wraps whichever is chosen, so the
guards, the round logs and the checkpoints apply to all of them alike.

Strategy state that must survive a restart (FedAdam's first and second moments, the rounds a
differential-privacy accountant has counted) is read and written by :func:`strategy_state`
and :func:`load_strategy_state`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)
from flwr.serverapp.strategy.fedopt import FedOpt

from models.fl_config import RunConfig

STATE_MOMENTS = ("m_t", "v_t")
DP_STATE = "dp/noise-multipliers"


def build_strategy(cfg: RunConfig) -> FedAvg:
    """Flower's strategy named by ``cfg.strategy``, configured from the run config.

    Parameters
    ----------
    cfg : RunConfig
        The run's configuration; ``strategy`` is one of ``models.fl_config.STRATEGIES``.

    Returns
    -------
    FedAvg
        A Flower strategy (every one of them derives from FedAvg).
    """
    sampling = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": 1.0,
        "min_train_nodes": cfg.min_sites,
        "min_evaluate_nodes": cfg.min_sites,
        "min_available_nodes": cfg.min_sites,
    }
    name = cfg.strategy
    if name == "fedavg":
        return FedAvg(**sampling)  # type: ignore[arg-type]
    if name == "fedprox":
        return FedProx(**sampling, proximal_mu=cfg.proximal_mu)  # type: ignore[arg-type]
    if name == "fedadam":
        return FedAdam(
            **sampling,  # type: ignore[arg-type]
            eta=cfg.server_learning_rate,
            eta_l=cfg.learning_rate,
            beta_1=cfg.adam_beta1,
            beta_2=cfg.adam_beta2,
            tau=cfg.adam_tau,
        )
    if name == "fedmedian":
        return FedMedian(**sampling)  # type: ignore[arg-type]
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(**sampling, beta=cfg.trimmed_fraction)  # type: ignore[arg-type]
    if name == "krum":
        return Krum(**sampling, num_malicious_nodes=cfg.krum_byzantine)  # type: ignore[arg-type]
    if name == "multikrum":
        return MultiKrum(
            **sampling,  # type: ignore[arg-type]
            num_malicious_nodes=cfg.krum_byzantine,
            num_nodes_to_select=cfg.krum_select,
        )
    if name == "bulyan":
        return Bulyan(**sampling, num_malicious_nodes=cfg.krum_byzantine)  # type: ignore[arg-type]
    raise ValueError(f"unknown strategy {name!r}")  # RunConfig already refuses it


def base_strategy(strategy: Strategy) -> Strategy:
    """The innermost strategy under wrappers that keep it as ``.strategy`` (Flower's DP ones)."""
    while isinstance(getattr(strategy, "strategy", None), Strategy):
        strategy = strategy.strategy  # type: ignore[attr-defined]
    return strategy


def _accountant(strategy: Strategy) -> Any | None:
    """The privacy accountant of a DP wrapper in the chain (``.privacy`` with ``restore``)."""
    while True:
        privacy = getattr(strategy, "privacy", None)
        if privacy is not None and hasattr(privacy, "restore"):
            return privacy
        inner = getattr(strategy, "strategy", None)
        if not isinstance(inner, Strategy):
            return None
        strategy = inner


def strategy_state(strategy: Strategy) -> dict[str, npt.NDArray[np.generic]]:
    """Arrays a strategy carries from round to round.

    FedOpt's moments as ``"m_t/<name>"`` and ``"v_t/<name>"``; a DP wrapper's accountant as
    ``"dp/noise-multipliers"`` (one per round, so a resumed run keeps counting its epsilon).
    Empty for the stateless strategies. Wrappers that keep the strategy as ``.strategy`` are
    looked through.
    """
    state: dict[str, npt.NDArray[np.generic]] = {}
    accountant = _accountant(strategy)
    if accountant is not None:
        state[DP_STATE] = np.asarray(accountant.noise_multipliers, dtype=np.float64)
    base = base_strategy(strategy)
    if isinstance(base, FedOpt):
        for moment in STATE_MOMENTS:
            for key, value in (getattr(base, moment) or {}).items():
                state[f"{moment}/{key}"] = np.asarray(value)
    return state


def load_strategy_state(strategy: Strategy, state: Mapping[str, npt.NDArray[np.generic]]) -> None:
    """Put back what :func:`strategy_state` saved; refuses state of another strategy."""
    accountant = _accountant(strategy)
    if DP_STATE in state:
        if accountant is None:
            raise ValueError(
                "checkpoint holds differential-privacy rounds but this run adds no noise: "
                "was the run started with other dp-* settings?"
            )
        accountant.restore([float(z) for z in state[DP_STATE]])
    moments = {k: v for k, v in state.items() if k != DP_STATE}
    if not moments:
        return
    base = base_strategy(strategy)
    if not isinstance(base, FedOpt):
        raise ValueError(
            f"checkpoint holds optimiser state ({', '.join(sorted(moments)[:3])}...) but "
            f"{type(base).__name__} keeps none: was the run started with another strategy?"
        )
    for moment in STATE_MOMENTS:
        prefix = f"{moment}/"
        values = {k[len(prefix) :]: np.array(v) for k, v in moments.items() if k.startswith(prefix)}
        setattr(base, moment, values or None)
