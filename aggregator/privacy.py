"""Differential privacy for the federation: client-side clipping, server noise, epsilon spent.

Each site clips its model update (new weights minus the round's global weights) to an L2 norm
``C`` before sending it (``edge_agent.fl_privacy.dp_clipping_mod``); the server averages the
clipped updates and adds Gaussian noise of standard deviation ``z * C / n`` to the average,
``n`` being the number of sites a round needs. This is Flower's
``DifferentialPrivacyClientSideFixedClipping`` (McMahan et al., "Learning differentially private
recurrent language models", ICLR 2018), which :class:`DpFixedClipping` wraps to also count the
privacy spent. The guarantee is site-level: what leaks about the presence of any one site's
whole data set, over every round of the run.

Accounting. A site's clipped update moves the example-weighted mean by at most ``p_max * C``,
``p_max`` being the largest weight share in the round, so the round is a Gaussian mechanism with
effective noise multiplier ``z / (n * p_max)`` (``z`` exactly when the sites weigh the same).
No amplification by sampling is claimed: sites are not sampled at random. Two figures:

* ``epsilon_rdp``: Rényi DP composition with the conversion of Canonne, Kamath and Steinke
  (2020, Prop. 12) over the orders of Google's ``dp_accounting`` (and Flower's ``RdpAccountant``,
  which uses it), matching its ``RdpAccountant`` for a ``GaussianDpEvent`` to 1e-9.
* ``epsilon``: the exact value. Rounds of the Gaussian mechanism compose to one Gaussian
  mechanism with ``mu = sqrt(sum 1 / z_r**2)`` (Dong, Roth and Su, "Gaussian differential
  privacy", JRSS-B 2022, Cor. 3.3), whose privacy profile is
  ``delta(eps) = Phi(-eps/mu + mu/2) - exp(eps) * Phi(-eps/mu - mu/2)`` (Balle and Wang, ICML
  2018, Thm. 8). Never above ``epsilon_rdp``.

Examples
--------
>>> round(rdp_epsilon([1.0] * 10, 1e-5), 3), round(exact_epsilon([1.0] * 10, 1e-5), 3)
(19.054, 17.857)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, Strategy
from scipy.optimize import brentq
from scipy.special import log_ndtr

from models.fl_config import RunConfig

logger = logging.getLogger(__name__)

#: Rényi orders, as ``dp_accounting.rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS`` (0.6.0).
RDP_ORDERS: tuple[float, ...] = (
    tuple(1 + x / 10.0 for x in range(1, 100))
    + tuple(float(a) for a in range(11, 64))
    + (128.0, 256.0, 512.0, 1024.0)
)


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def _check_multipliers(noise_multipliers: Sequence[float]) -> None:
    for z in noise_multipliers:
        if not math.isfinite(z) or z <= 0:
            raise ValueError(f"noise multipliers must be positive and finite, got {z}")


def rdp_epsilon(noise_multipliers: Sequence[float], delta: float) -> float:
    """Epsilon of composed Gaussian mechanisms by Rényi DP, one noise multiplier per round.

    Parameters
    ----------
    noise_multipliers : Sequence[float]
        Noise standard deviation over sensitivity, per round (dimensionless, > 0).
    delta : float
        Target delta, in (0, 1).

    Returns
    -------
    float
        The smallest epsilon over :data:`RDP_ORDERS`; 0.0 for no round.

    Raises
    ------
    ValueError
        ``delta`` outside (0, 1), or a noise multiplier that is not positive and finite.
    """
    _check_delta(delta)
    _check_multipliers(noise_multipliers)
    if not noise_multipliers:
        return 0.0
    orders = np.asarray(RDP_ORDERS)
    # RDP of the Gaussian mechanism at order a is a / (2 z^2) (Mironov 2017, Cor. 3); it adds up
    rdp = orders * sum(0.5 / z**2 for z in noise_multipliers)
    eps = rdp + np.log1p(-1 / orders) - np.log(delta * orders) / (orders - 1)
    eps[delta**2 + np.expm1(-rdp) > 0] = 0.0  # the KL bound already gives epsilon 0
    return float(max(0.0, eps.min()))


def gaussian_delta(mu: float, epsilon: float) -> float:
    """Delta of the Gaussian mechanism with ``mu = sensitivity / sigma`` at ``epsilon``."""
    if mu <= 0 or not math.isfinite(mu):
        raise ValueError(f"mu must be positive and finite, got {mu}")
    a = log_ndtr(-epsilon / mu + mu / 2)
    b = epsilon + log_ndtr(-epsilon / mu - mu / 2)
    return float(math.exp(a) * -math.expm1(b - a)) if b < a else 0.0


def exact_epsilon(noise_multipliers: Sequence[float], delta: float) -> float:
    """The exact epsilon of composed Gaussian mechanisms at ``delta`` (tight, no bound).

    Raises
    ------
    ValueError
        As :func:`rdp_epsilon`.
    """
    _check_delta(delta)
    _check_multipliers(noise_multipliers)
    if not noise_multipliers:
        return 0.0
    mu = math.sqrt(sum(1 / z**2 for z in noise_multipliers))
    if gaussian_delta(mu, 0.0) <= delta:
        return 0.0
    high = 1.0
    while gaussian_delta(mu, high) > delta:
        high *= 2
    return float(brentq(lambda e: gaussian_delta(mu, e) - delta, 0.0, high, xtol=1e-12))


#: Floor for noised BatchNorm variances: noise can make them negative, and then NaN.
VARIANCE_FLOOR = 1e-3


def repair_noised(arrays: ArrayRecord) -> ArrayRecord:
    """Put the noised global model back into its domain (post-processing: costs no privacy).

    BatchNorm ``running_var`` arrays are raised to :data:`VARIANCE_FLOOR` (a negative variance
    turns every prediction into NaN) and integer counters to 0 or more.
    """
    repaired: dict[str, Array] = {}
    for key, array in arrays.items():
        values = array.numpy()
        if key.endswith("running_var"):
            values = np.maximum(values, np.asarray(VARIANCE_FLOOR, dtype=values.dtype))
        elif np.issubdtype(values.dtype, np.integer):
            values = np.maximum(values, 0)
        repaired[key] = Array(np.asarray(values))
    return ArrayRecord(repaired)


@dataclass(frozen=True)
class PrivacySpent:
    """Site-level (epsilon, delta) spent by a run so far."""

    epsilon: float
    epsilon_rdp: float
    delta: float
    rounds: int


class GaussianAccountant:
    """Counts rounds of the Gaussian mechanism and reports the (epsilon, delta) they spend."""

    def __init__(self, delta: float) -> None:
        _check_delta(delta)
        self.delta = delta
        self.noise_multipliers: list[float] = []

    def compose(self, noise_multiplier: float) -> None:
        """Add one round with the given (effective) noise multiplier."""
        _check_multipliers([noise_multiplier])
        self.noise_multipliers.append(noise_multiplier)

    def restore(self, noise_multipliers: Sequence[float]) -> None:
        """Take back the rounds of an earlier process of the run (from a checkpoint)."""
        _check_multipliers(noise_multipliers)
        self.noise_multipliers = [float(z) for z in noise_multipliers]

    def spent(self) -> PrivacySpent:
        """Epsilon (exact and by RDP) at the accountant's delta after the rounds so far."""
        zs = self.noise_multipliers
        return PrivacySpent(
            exact_epsilon(zs, self.delta), rdp_epsilon(zs, self.delta), self.delta, len(zs)
        )


@dataclass(frozen=True)
class DpSettings:
    """Run-config DP settings: noise multiplier ``z`` (0 = off), clipping norm ``C``, delta."""

    noise_multiplier: float = 0.0
    clipping_norm: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not math.isfinite(self.noise_multiplier) or self.noise_multiplier < 0:
            raise ValueError(f"dp-noise-multiplier must be >= 0, got {self.noise_multiplier}")
        if not math.isfinite(self.clipping_norm) or self.clipping_norm <= 0:
            raise ValueError(f"dp-clipping-norm must be positive, got {self.clipping_norm}")
        if not 0 < self.delta < 1:
            raise ValueError(f"dp-delta must be in (0, 1), got {self.delta}")

    @property
    def enabled(self) -> bool:
        """Whether the run adds noise (a positive noise multiplier)."""
        return self.noise_multiplier > 0


class DpFixedClipping(DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed-clipping DP wrapper that also accounts the epsilon spent.

    The noised model is put back into its domain (:func:`repair_noised`). After each
    aggregated round it logs the epsilon so far and adds ``dp-epsilon``,
    ``dp-epsilon-rdp``, ``dp-delta`` and ``dp-noise-multiplier-effective`` to the aggregated
    training metrics.

    Parameters
    ----------
    strategy : FedAvg
        The strategy whose mean gets the noise (its ``weighted_by_key`` metric gives the weights).
    settings : DpSettings
        Noise multiplier (must be positive), clipping norm and delta.
    num_sites : int
        Sites per round, ``n`` in the noise's ``z * C / n``.
    """

    def __init__(self, strategy: FedAvg, settings: DpSettings, num_sites: int) -> None:
        if not settings.enabled:
            raise ValueError("DP needs a positive dp-noise-multiplier")
        super().__init__(strategy, settings.noise_multiplier, settings.clipping_norm, num_sites)
        self.accountant = None  # Flower's needs dp_accounting and a plain FedAvg; ours below
        self.privacy = GaussianAccountant(settings.delta)

    @property
    def weighted_by_key(self) -> str:
        """The wrapped strategy's weight metric (``num-examples`` unless it says otherwise)."""
        key = getattr(self.strategy, "weighted_by_key", "num-examples")
        return str(key)

    @property
    def inner(self) -> Strategy:
        """The wrapped strategy."""
        inner: Strategy = self.strategy
        return inner

    def effective_noise_multiplier(self, replies: Sequence[Message]) -> float:
        """``z / (n * p_max)`` for these replies, ``p_max`` the largest weight share."""
        key = self.weighted_by_key
        weights = []
        for reply in replies:
            record = next(iter(reply.content.metric_records.values()), MetricRecord())
            value = record.get(key, 1.0)
            weights.append(float(value) if isinstance(value, int | float) else 1.0)
        total = sum(weights)
        p_max = max(weights) / total if total > 0 else 1.0
        return self.noise_multiplier / (self.num_sampled_clients * p_max)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate as Flower's wrapper does (noise added), then account the round."""
        replies = list(replies)
        ok = [r for r in replies if not r.has_error()]
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        arrays = repair_noised(arrays)
        z_eff = self.effective_noise_multiplier(ok)
        self.privacy.compose(z_eff)
        spent = self.privacy.spent()
        logger.info(
            "round %d: DP noise multiplier %.4g (effective %.4g), epsilon %.4g "
            "(RDP %.4g) at delta %g after %d rounds",
            server_round, self.noise_multiplier, z_eff, spent.epsilon,
            spent.epsilon_rdp, spent.delta, spent.rounds,
        )  # fmt: skip
        metrics = metrics if metrics is not None else MetricRecord()
        metrics["dp-epsilon"] = spent.epsilon
        metrics["dp-epsilon-rdp"] = spent.epsilon_rdp
        metrics["dp-delta"] = spent.delta
        metrics["dp-noise-multiplier-effective"] = z_eff
        return arrays, metrics

    def privacy_spent(self) -> PrivacySpent:  # type: ignore[override]
        """Site-level (epsilon, delta) spent by this run so far."""
        return self.privacy.spent()


def dp_settings(cfg: RunConfig) -> DpSettings:
    """The run's DP settings (``dp-noise-multiplier``, ``dp-clipping-norm``, ``dp-delta``)."""
    return DpSettings(cfg.dp_noise_multiplier, cfg.dp_clipping_norm, cfg.dp_delta)


def with_dp(strategy: FedAvg, cfg: RunConfig) -> Strategy:
    """``strategy`` wrapped in :class:`DpFixedClipping` when the run asks for DP, else as is.

    The noise is calibrated for ``min-sites`` sites a round; rounds with more sites get more
    noise than needed, and the accountant counts what they actually got.
    """
    settings = dp_settings(cfg)
    if not settings.enabled:
        return strategy
    return DpFixedClipping(strategy, settings, num_sites=cfg.min_sites)
