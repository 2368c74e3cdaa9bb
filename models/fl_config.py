"""Typed view of the Flower run config (``[tool.flwr.app.config]``), shared by both apps.

Flower hands the run config over as a flat ``{kebab-case key: scalar}`` mapping; both the
ServerApp and the ClientApp parse it here so they cannot disagree about a default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from models.errors import SignalError
from models.network import NetworkConfig
from models.partition import PartitionError, parse_partition

DEFAULT_CLASSES = ("normal", "inner_race", "outer_race", "ball")
# ``update-compression`` codecs for train replies (docs/update-compression.md)
UPDATE_CODECS = ("none", "int8")
# Flower strategies a run can choose with ``strategy`` (aggregator.strategies builds them)
STRATEGIES = (
    "fedavg",
    "fedprox",
    "fedadam",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "multikrum",
    "bulyan",
)
# ``personalisation`` modes of the ClientApp (edge_agent.fl_personal, docs/federated-training.md)
PERSONALISATIONS = ("none", "local-bn", "local-head")
# ``round-lr-schedule``: the sites' learning rate across rounds (RunConfig.round_learning_rate)
ROUND_LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class RunConfig:
    """Hyper-parameters of a federated run (see pyproject's ``[tool.flwr.app.config]``)."""

    num_server_rounds: int = 3
    local_epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 1e-3
    # the local step across rounds: constant, or cosine from learning-rate in round 1 down to
    # learning-rate * lr-floor in the last round (round_learning_rate)
    round_lr_schedule: str = "constant"
    lr_floor: float = 0.05
    min_sites: int = 2
    fraction_train: float = 1.0
    registry_dir: str = "var/registry"
    sample_rate_hz: float = 12_000.0
    window_samples: int = 2048
    class_names: tuple[str, ...] = DEFAULT_CLASSES
    eval_fraction: float = 0.2
    evaluate_every: int = 1  # federated evaluation every N rounds and in the last one
    seed: int = 0
    round_timeout_s: float = 600.0
    signing_key: str = ""  # Ed25519 private key (PEM) that signs published models; "": unsigned
    update_compression: str = "none"  # "int8": 8-bit updates with error feedback
    # --- strategy and guards (docs/federated-training.md) ---
    strategy: str = "fedavg"
    proximal_mu: float = 0.01  # FedProx only
    server_learning_rate: float = 0.1  # FedAdam's eta
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    adam_tau: float = 1e-3
    trimmed_fraction: float = 0.2  # FedTrimmedAvg: cut from each tail
    krum_byzantine: int = 0  # Krum / MultiKrum / Bulyan: Byzantine sites tolerated
    krum_select: int = 2  # MultiKrum: updates averaged
    min_reply_fraction: float = 0.5  # of the sampled sites, valid replies for a round to count
    max_examples_per_site: int = 100_000  # cap on a reply's self-reported num-examples
    norm_outlier_mads: float = 5.0  # update-norm outlier threshold in MADs; 0 disables
    # --- checkpoints and resume ---
    checkpoint_dir: str = "var/checkpoints"
    run_name: str = ""  # names the checkpoint folder; the same name resumes; "": not resumable
    # --- server-side evaluation (aggregator.evaluation) ---
    server_eval_npz: str = ""  # .npz with x (n, channels, samples) and y (n,): held-out windows
    server_device: str = "auto"  # auto (cuda when present), cpu or cuda
    # --- differential privacy (docs/federated-security.md) ---
    dp_noise_multiplier: float = 0.0  # z: noise sd z*C/min-sites on the mean of updates; 0: off
    dp_clipping_norm: float = 1.0  # C: L2 bound of a site's update, clipped on the site
    dp_delta: float = 1e-5  # delta at which the run's epsilon is reported
    # --- per-site personalisation (edge_agent.fl_personal) ---
    personalisation: str = "none"  # none, local-bn (FedBN) or local-head (fine-tuned head)
    personal_head_epochs: int = 20  # local-head: epochs over the frozen body's embeddings
    personal_head_learning_rate: float = 0.01  # local-head: Adam step of the head fine-tuning
    # --- virtual sites of a simulation (edge_agent.fl_data, docs/fl-workflow.md) ---
    data_manifest: str = ""  # manifest a simulated node reads its partition of; "": the store
    data_partition: str = "iid"  # iid, dirichlet:ALPHA or by:COLUMN (models.partition)
    data_channel: str = "de"  # the manifest channel the model reads

    def __post_init__(self) -> None:
        if self.num_server_rounds < 1 or self.local_epochs < 1 or self.batch_size < 2:
            raise SignalError("num-server-rounds, local-epochs >= 1 and batch-size >= 2")
        if not 0 < self.learning_rate < 1:
            raise SignalError(f"learning-rate must be in (0, 1), got {self.learning_rate}")
        if self.evaluate_every < 1:
            raise SignalError(f"evaluate-every must be >= 1, got {self.evaluate_every}")
        if self.round_lr_schedule not in ROUND_LR_SCHEDULES:
            raise SignalError(
                f"round-lr-schedule must be one of {', '.join(ROUND_LR_SCHEDULES)}, "
                f"got {self.round_lr_schedule!r}"
            )
        if not 0 < self.lr_floor <= 1:
            raise SignalError(f"lr-floor must be in (0, 1], got {self.lr_floor}")
        if self.min_sites < 1 or not 0 < self.fraction_train <= 1:
            raise SignalError("min-sites >= 1 and fraction-train in (0, 1]")
        if not 0 < self.eval_fraction < 1:
            raise SignalError(f"eval-fraction must be in (0, 1), got {self.eval_fraction}")
        if not math.isfinite(self.sample_rate_hz) or self.sample_rate_hz <= 0:
            raise SignalError(f"sample-rate-hz must be positive, got {self.sample_rate_hz}")
        if not math.isfinite(self.round_timeout_s) or self.round_timeout_s <= 0:
            raise SignalError(f"round-timeout-s must be positive, got {self.round_timeout_s}")
        names = self.class_names
        if len(names) < 2 or len(set(names)) != len(names):
            raise SignalError(f"class-names needs two or more distinct names, got {names}")
        if "normal" in names and names[0] != "normal":
            raise SignalError("class-names must list 'normal' first")
        if self.update_compression not in UPDATE_CODECS:
            raise SignalError(
                f"update-compression must be one of {', '.join(UPDATE_CODECS)}, "
                f"got {self.update_compression!r}"
            )
        self.network  # noqa: B018 - validates window-samples against the network's limits
        self._check_strategy()
        self._check_privacy()
        self._check_data()
        self._check_personalisation()

    def _check_personalisation(self) -> None:
        """Validate the per-site personalisation keys."""
        if self.personalisation not in PERSONALISATIONS:
            raise SignalError(
                f"personalisation must be one of {', '.join(PERSONALISATIONS)}, "
                f"got {self.personalisation!r}"
            )
        if self.personal_head_epochs < 1:
            raise SignalError(f"personal-head-epochs must be >= 1, got {self.personal_head_epochs}")
        if not 0 < self.personal_head_learning_rate < 1:
            raise SignalError(
                "personal-head-learning-rate must be in (0, 1), "
                f"got {self.personal_head_learning_rate}"
            )

    def _check_privacy(self) -> None:
        """Validate the differential-privacy keys."""
        z, c = self.dp_noise_multiplier, self.dp_clipping_norm
        if not math.isfinite(z) or z < 0:
            raise SignalError(f"dp-noise-multiplier must be >= 0 (0: no DP), got {z}")
        if not math.isfinite(c) or c <= 0:
            raise SignalError(f"dp-clipping-norm must be positive, got {c}")
        if not 0 < self.dp_delta < 1:
            raise SignalError(f"dp-delta must be in (0, 1), got {self.dp_delta}")
        # the noise is calibrated to a mean of clipped updates: robust rules and server
        # optimisers change the sensitivity, so the reported epsilon would not hold
        if z > 0 and self.strategy not in ("fedavg", "fedprox"):
            raise SignalError(
                f"dp-noise-multiplier > 0 needs strategy fedavg or fedprox, got {self.strategy}"
            )
        # error feedback adds last round's rounding residual to the clipped update, so the
        # decoded update may exceed the clipping norm (by 0.4 % measured): the epsilon would
        # not hold exactly (docs/update-compression.md)
        if z > 0 and self.update_compression != "none":
            raise SignalError(
                'dp-noise-multiplier > 0 needs update-compression = "none": compression\'s'
                " error feedback can push an update past the clipping norm"
            )

    def _check_strategy(self) -> None:
        """Validate the strategy, guard and checkpoint keys."""
        if self.strategy not in STRATEGIES:
            raise SignalError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        for name in ("proximal_mu", "server_learning_rate", "adam_tau", "norm_outlier_mads"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise SignalError(f"{name.replace('_', '-')} must be >= 0, got {value}")
        if self.strategy == "fedprox" and self.proximal_mu <= 0:
            raise SignalError("strategy fedprox needs proximal-mu > 0 (0 is plain FedAvg)")
        if not 0 < self.server_learning_rate <= 10 or self.adam_tau <= 0:
            raise SignalError("server-learning-rate must be in (0, 10] and adam-tau > 0")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise SignalError("adam-beta1 and adam-beta2 must be in [0, 1)")
        if not 0 <= self.trimmed_fraction < 0.5:
            raise SignalError(f"trimmed-fraction must be in [0, 0.5), got {self.trimmed_fraction}")
        f = self.krum_byzantine
        if f < 0 or self.krum_select < 1:
            raise SignalError("krum-byzantine >= 0 and krum-select >= 1")
        # Blanchard et al. (NeurIPS 2017) need n > 2f + 2 for Krum; Bulyan (El Mhamdi et al.,
        # ICML 2018) n >= 4f + 3. Fewer sites would skip or mis-aggregate every round.
        need = {"krum": 2 * f + 3, "multikrum": 2 * f + 3, "bulyan": 4 * f + 3}.get(self.strategy)
        if need is not None and self.min_sites < need:
            raise SignalError(
                f"strategy {self.strategy} with krum-byzantine={f} needs min-sites >= {need}"
            )
        if not 0 < self.min_reply_fraction <= 1:
            raise SignalError(
                f"min-reply-fraction must be in (0, 1], got {self.min_reply_fraction}"
            )
        if self.max_examples_per_site < 1:
            raise SignalError("max-examples-per-site must be >= 1")
        if self.server_device not in ("auto", "cpu", "cuda"):
            raise SignalError(
                f"server-device must be auto, cpu or cuda, got {self.server_device!r}"
            )
        if self.run_name and (
            self.run_name in (".", "..")
            or not all(c.isalnum() or c in "-_." for c in self.run_name)
        ):
            raise SignalError(
                f"run-name may hold only letters, digits, '-', '_', '.': {self.run_name!r}"
            )

    def _check_data(self) -> None:
        """Validate the simulation data keys (``data-partition``, ``data-channel``)."""
        try:
            parse_partition(self.data_partition)
        except PartitionError as exc:
            raise SignalError(f"data-partition: {exc}") from exc
        if not self.data_channel:
            raise SignalError("data-channel must name a manifest channel, e.g. de")

    def round_learning_rate(self, server_round: int) -> float:
        """The local Adam step of (absolute) ``server_round`` under ``round-lr-schedule``.

        ``cosine``: ``lr * (f + (1 - f) * (1 + cos(pi * (r - 1) / (R - 1))) / 2)`` with
        ``f = lr-floor`` and ``R = num-server-rounds``: ``learning-rate`` in round 1, ``f`` times
        it in round R, rounds past R (a run extended on resume) at the floor. Sites restart
        Adam every round, so a constant step keeps the global model jittering around the
        optimum once the sites' updates disagree (non-identical data); decaying it lets the
        rounds settle (docs/federated-benchmarks.md, rounds to accuracy).

        >>> cfg = RunConfig(num_server_rounds=3, round_lr_schedule="cosine", lr_floor=0.1)
        >>> [round(cfg.round_learning_rate(r) * 1e3, 3) for r in (1, 2, 3)]
        [1.0, 0.55, 0.1]
        """
        if self.round_lr_schedule == "constant" or self.num_server_rounds == 1:
            return self.learning_rate
        progress = min(1.0, max(0.0, (server_round - 1) / (self.num_server_rounds - 1)))
        cosine = (1.0 + math.cos(math.pi * progress)) / 2.0
        return self.learning_rate * (self.lr_floor + (1.0 - self.lr_floor) * cosine)

    @property
    def network(self) -> NetworkConfig:
        """Network shape implied by this run."""
        return NetworkConfig(n_classes=len(self.class_names), window_samples=self.window_samples)

    @classmethod
    def from_run_config(cls, raw: Mapping[str, object]) -> RunConfig:
        """Parse Flower's run config; unknown keys are ignored, wrong types raise."""
        kwargs: dict[str, object] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in raw:
                continue
            value = raw[key]
            try:
                if f.name == "class_names":
                    names = tuple(s.strip() for s in str(value).split(",") if s.strip())
                    kwargs[f.name] = names
                elif f.type in ("int", int):
                    kwargs[f.name] = int(str(value))
                elif f.type in ("float", float):
                    kwargs[f.name] = float(str(value))
                else:
                    kwargs[f.name] = str(value)
            except ValueError as exc:
                raise SignalError(f"run config {key}={value!r}: {exc}") from exc
        return cls(**kwargs)  # type: ignore[arg-type]
