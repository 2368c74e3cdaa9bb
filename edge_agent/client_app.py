"""Flower ClientApp: train and evaluate the shared model on this site's local store.

Node config (``flower-supernode --node-config``): ``store-path`` (the edge agent's SQLite store),
``site-id`` and optionally ``anomaly-false-alarm-rate`` (0.05 by default). Only weights and
metrics leave the site, never windows.

Training uses the windows inside labels of the model's classes. Evaluation reports, besides
loss and accuracy on the latest part of each labelled recording, how the model's embedding
serves as a per-asset anomaly detector (`edge_agent.baselines.evaluate_anomaly`): a baseline
fitted on each asset's earlier unlabelled (or ``normal``) windows outside fault labels, tested
on its later ones (``anomaly-healthy-flagged`` of ``anomaly-healthy-windows``: false alarms)
and on its windows inside fault labels (``anomaly-fault-detected`` of
``anomaly-fault-windows``). They are counts, so that the server's weighted means pool them:
the federation's false-alarm rate is ``anomaly-healthy-flagged / anomaly-healthy-windows`` of
the aggregate.
"""

from __future__ import annotations

import logging
import time
import zlib

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edge_agent.fl_data import site_data
from edge_agent.fl_mods import update_compression_mod
from edge_agent.fl_personal import after_training, before_training, personal_metrics, personal_path
from edge_agent.fl_privacy import dp_clipping_mod
from edge_agent.store import LabelledWindows, LocalStore
from models.fl_config import RunConfig
from models.network import WDCNN, build_model, reset_norm_statistics
from models.training import evaluate, train

logger = logging.getLogger(__name__)

app = ClientApp(mods=[update_compression_mod])

DEFAULT_FALSE_ALARM_RATE = 0.05
EMBED_BATCH = 256


def _site_seed(context: Context) -> int:
    """A per-site seed offset that survives SuperNode restarts (node ids do not)."""
    return zlib.crc32(_site(context).encode()) % 1000


def _server_round(msg: Message) -> int:
    """The ``server-round`` Flower's strategies put in each train and evaluate config."""
    return int(str(msg.content.config_records["config"].get("server-round", 0)))


def _site(context: Context) -> str:
    if "site-id" in context.node_config:
        return str(context.node_config["site-id"])
    if "partition-id" in context.node_config:  # a virtual site of the Simulation Engine
        return f"sim-site-{int(str(context.node_config['partition-id'])):03d}"
    return f"node-{context.node_id}"


def _local_data(context: Context, cfg: RunConfig) -> tuple[LabelledWindows, np.ndarray, np.ndarray]:
    # the site's store, or a simulated node's share of data-manifest (edge_agent.fl_data)
    return site_data(context.node_config, cfg)


def _prepare(
    msg: Message, context: Context
) -> tuple[RunConfig, LabelledWindows, np.ndarray, np.ndarray, WDCNN]:
    """Run config, local data with its time split, and the received global model."""
    torch.set_num_threads(1)  # one ClientApp process per message; the agent shares the node
    cfg = RunConfig.from_run_config(context.run_config)
    data, train_idx, eval_idx = _local_data(context, cfg)
    net = build_model(cfg.network)
    net.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    return cfg, data, train_idx, eval_idx, net


@app.train(mods=[dp_clipping_mod])  # clip (when the run asks) before compressing
def train_handler(msg: Message, context: Context) -> Message:
    """Train the received global model on local labelled windows."""
    cfg, data, train_idx, _, net = _prepare(msg, context)
    personal = before_training(net, cfg, personal_path(context, cfg))  # "local-bn": site's BN
    reset_norm_statistics(net)
    server_round = _server_round(msg)
    # FedProx (aggregator.strategies) sends its proximal weight with every train message
    proximal_mu = float(str(msg.content.config_records["config"].get("proximal-mu", 0.0)))
    started = time.perf_counter()
    result = train(
        net,
        data.x[train_idx],
        data.y[train_idx],
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.round_learning_rate(server_round),
        seed=cfg.seed + server_round * 1000 + _site_seed(context),
        proximal_mu=proximal_mu,
    )
    train_seconds = time.perf_counter() - started
    after_training(net, cfg, personal_path(context, cfg), personal, server_round)
    metrics = MetricRecord(
        {
            "train-loss": result.loss,
            "train-accuracy": result.accuracy,
            "num-examples": result.num_examples,
            "train-seconds": train_seconds,  # local training wall time (round-overhead bench)
        }
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(net.state_dict()),
            "metrics": metrics,
            "site": ConfigRecord({"site-id": _site(context)}),
        }
    )
    return Message(content=content, reply_to=msg)


def _anomaly_metrics(net: WDCNN, cfg: RunConfig, context: Context) -> dict[str, int]:
    """Per-asset anomaly detection with the model's embedding, as counts over the site."""
    from edge_agent.baselines import evaluate_anomaly

    raw = context.node_config.get("anomaly-false-alarm-rate", DEFAULT_FALSE_ALARM_RATE)
    try:
        rate = float(str(raw))
    except ValueError:
        rate = float("nan")
    if not 0.0 < rate < 0.5:
        raise ValueError(f"node config 'anomaly-false-alarm-rate' must be in (0, 0.5), got {raw!r}")

    def embed_windows(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        rows = []
        net.eval()
        with torch.no_grad():
            for start in range(0, len(x), EMBED_BATCH):
                _, embedding = net(torch.from_numpy(x[start : start + EMBED_BATCH]))
                rows.append(embedding.numpy().astype(np.float64))
        return np.concatenate(rows) if rows else np.zeros((0, 1))

    if not context.node_config.get("store-path"):  # a simulated node (fl_data): no assets
        names = ("assets", "healthy-windows", "healthy-flagged", "fault-windows", "fault-detected")
        return {f"anomaly-{name}": 0 for name in names}
    path = str(context.node_config["store-path"])
    with LocalStore(path, readonly=True) as store, store.reader() as conn:
        counts = evaluate_anomaly(
            conn,
            embed_windows,
            sample_rate_hz=cfg.sample_rate_hz,
            window_samples=cfg.window_samples,
            false_alarm_rate=rate,
        )
    return {
        "anomaly-assets": counts.assets,
        "anomaly-healthy-windows": counts.healthy_windows,
        "anomaly-healthy-flagged": counts.healthy_flagged,
        "anomaly-fault-windows": counts.fault_windows,
        "anomaly-fault-detected": counts.fault_detected,
    }


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the latest part of each local recording.

    With ``personalisation`` set, also the site's personalised model (``personal-eval-*``,
    ``edge_agent.fl_personal``); ``eval-loss`` and ``eval-accuracy`` stay the global model's.
    """
    cfg, data, train_idx, eval_idx, net = _prepare(msg, context)
    result = evaluate(net, data.x[eval_idx], data.y[eval_idx], cfg.class_names)
    server_round = _server_round(msg)
    personal = personal_metrics(
        net,
        cfg,
        personal_path(context, cfg),
        (data.x[train_idx], data.y[train_idx]),
        (data.x[eval_idx], data.y[eval_idx]),
        server_round=server_round,
        seed=cfg.seed + server_round * 1000 + _site_seed(context),
    )
    metrics = MetricRecord(
        {
            "eval-loss": result.loss,
            "eval-accuracy": result.accuracy,
            "num-examples": result.num_examples,
            **_anomaly_metrics(net, cfg, context),
            **personal,
        }
    )
    content = RecordDict({"metrics": metrics, "site": ConfigRecord({"site-id": _site(context)})})
    return Message(content=content, reply_to=msg)
