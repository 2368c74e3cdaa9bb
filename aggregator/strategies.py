"""Flower's own strategies, chosen by the run config's ``strategy`` key.

No strategy is forked: each is Flower's class with FedPM's sampling settings and the run
config's parameters. ``aggregator.strategy.GuardedStrategy`` wraps whichever is chosen, so the
guards, the round logs and the checkpoints apply to all of them alike.

Strategy state that must survive a restart (FedAdam's first and second moments) is read and
written by :func:`strategy_state` and :func:`load_strategy_state`.
"""

from __future__ import annotations

from collections.abc import Mapping

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


def strategy_state(strategy: Strategy) -> dict[str, npt.NDArray[np.generic]]:
    """Arrays a strategy carries from round to round (``"m_t/<name>"``, ``"v_t/<name>"``).

    Empty for the stateless strategies (all but the FedOpt family). Wrappers that keep the
    strategy as ``.strategy`` (differential privacy) are looked through.
    """
    strategy = base_strategy(strategy)
    state: dict[str, npt.NDArray[np.generic]] = {}
    if isinstance(strategy, FedOpt):
        for moment in STATE_MOMENTS:
            for key, value in (getattr(strategy, moment) or {}).items():
                state[f"{moment}/{key}"] = np.asarray(value)
    return state


def load_strategy_state(strategy: Strategy, state: Mapping[str, npt.NDArray[np.generic]]) -> None:
    """Put back what :func:`strategy_state` saved; refuses state of another strategy."""
    strategy = base_strategy(strategy)
    if not state:
        return
    if not isinstance(strategy, FedOpt):
        raise ValueError(
            f"checkpoint holds optimiser state ({', '.join(sorted(state)[:3])}...) but "
            f"{type(strategy).__name__} keeps none: was the run started with another strategy?"
        )
    for moment in STATE_MOMENTS:
        prefix = f"{moment}/"
        values = {k[len(prefix) :]: np.array(v) for k, v in state.items() if k.startswith(prefix)}
        setattr(strategy, moment, values or None)
