"""Per-site personalisation of the federated model: local BatchNorm or a fine-tuned head.

Sites are not identical: other machines, speeds, resonances, other faults seen. The run config's
``personalisation`` lets each site keep part of the model to itself, next to the global model
the federation averages (docs/federated-training.md, "Personalisation"):

``"local-bn"`` (FedBN, Li et al., ICLR 2021)
    The site's BatchNorm layers (scale, shift and running statistics) stay at the site. Each
    train message: the received global model takes the site's saved BatchNorm layers, trains
    (statistics re-estimated, :func:`models.network.reset_norm_statistics`), and the trained
    layers are saved again. Evaluation scores the global model and the global model with the
    site's BatchNorm scale and shift, their statistics re-estimated on the site's training
    windows for this global body (AdaBN, Li et al., Pattern Recognition 80, 2018) and saved.
``"local-head"`` (fine-tuned head, as FedPer keeps a personal head: Arivazhagan et al., 2019)
    Training is plain FedAvg. Each evaluate message (which carries the round's new global
    model): the site fine-tunes the classifier head on the frozen body's embeddings of its
    training windows, starting from its saved head when it has one, and saves the head.
    Evaluation scores the global model and the global body with the site's head.

Every array is still uploaded: the published global model must stay complete (a new site, the
registry and the serving role need BatchNorm and head too), and the guards expect the global
model's structure. What stays local is the site's *version* of those layers.

The personal state lives beside the site's store as ``fl-personal-<run>.npz`` (``<run>`` is the
run config's ``run-name``, so a resumed run keeps it, else ``run-<Flower run id>``; a virtual
node of Flower's simulation keeps it in the temporary folder, :func:`personal_path`), written to
a staging name, flushed and renamed (``models.durable``), like the compression residual
(:mod:`edge_agent.fl_mods`). It records the mode and a key of the personal layers' names and
shapes and the class names: a state of another mode, model shape or class list, or one that
cannot be read, is dropped with a log line and the site starts again from the global layers.
Saving removes other runs' states and staging files a crash left behind.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import Context
from torch import nn
from torch.nn import functional

from models.durable import replace_npz
from models.fl_config import RunConfig
from models.network import WDCNN
from models.training import EvalResult, FitResult, evaluate, recalibrate_norm_statistics

logger = logging.getLogger(__name__)

PERSONAL_GLOB = "fl-personal-*.npz"
STAGING_GLOB = ".fl-personal-*.tmp"
_META_ENTRY = "__meta__"
HEAD_PREFIX = "head."
EMBED_BATCH = 256

Arrays = dict[str, npt.NDArray[np.generic]]


@dataclass
class PersonalState:
    """The layers a site keeps to itself, and where they come from.

    Parameters
    ----------
    mode
        ``"local-bn"`` or ``"local-head"``.
    model_key
        :func:`model_key` of the model the layers belong to.
    arrays
        The personal entries of the model's state dict, by name.
    updates
        How many rounds have updated this state (1 after its first round).
    server_round
        The server round that last updated it.
    """

    mode: str
    model_key: str
    arrays: Arrays = field(default_factory=dict)
    updates: int = 0
    server_round: int = 0


def personal_keys(net: nn.Module, mode: str) -> tuple[str, ...]:
    """The state-dict names a site keeps under ``mode``, in the model's order.

    ``"local-bn"``: every entry of every BatchNorm layer (weight, bias, running mean and
    variance, batch count). ``"local-head"``: the classifier head's weight and bias.
    """
    if mode == "local-bn":
        prefixes = tuple(
            f"{name}." for name, module in net.named_modules() if isinstance(module, nn.BatchNorm1d)
        )
    elif mode == "local-head":
        prefixes = (HEAD_PREFIX,)
    else:
        raise ValueError(f"no personal layers for personalisation {mode!r}")
    return tuple(k for k in net.state_dict() if k.startswith(prefixes))


def model_key(net: nn.Module, mode: str, class_names: tuple[str, ...]) -> str:
    """A short hash naming the personal layers' names and shapes, the mode and the classes.

    Two models share a key exactly when a personal state of one fits the other.
    """
    state = net.state_dict()
    text = ";".join(f"{k}:{tuple(state[k].shape)}" for k in personal_keys(net, mode))
    text += f"|{mode}|{','.join(class_names)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def personal_path(context: Context, cfg: RunConfig) -> Path | None:
    """Where this site keeps the run's personal state; None under ``personalisation = "none"``.

    Beside the store named by the node config's ``store-path``. A virtual node of Flower's
    Simulation Engine (``partition-id``, no store) keeps it in the temporary folder, under
    ``fedpm-personal/<run>/partition-<id>/``: a simulation's sites live as long as its run.
    """
    if cfg.personalisation == "none":
        return None
    run = cfg.run_name or f"run-{context.run_id}"
    store = context.node_config.get("store-path")
    if store:
        folder = Path(str(store)).resolve().parent
    elif "partition-id" in context.node_config:
        partition = int(str(context.node_config["partition-id"]))
        folder = Path(tempfile.gettempdir()) / "fedpm-personal" / run / f"partition-{partition}"
        folder.mkdir(parents=True, exist_ok=True)
    else:
        raise ValueError("personalisation needs the node config's 'store-path'")
    return folder / f"fl-personal-{run}.npz"


def load_personal(path: Path, mode: str, key: str) -> PersonalState | None:
    """The personal state saved at ``path`` if it fits ``mode`` and ``key``, else None.

    A missing file gives None silently; an unreadable one, or one of another mode or model
    (another shape, other classes), is logged and ignored (the next save replaces it).
    """
    if not path.exists():
        return None
    try:
        with path.open("rb") as file, np.load(file, allow_pickle=False) as data:
            meta = json.loads(bytes(data[_META_ENTRY]).decode())
            arrays = {k: np.asarray(data[k]) for k in data.files if k != _META_ENTRY}
        state = PersonalState(
            mode=str(meta["mode"]),
            model_key=str(meta["model-key"]),
            arrays=arrays,
            updates=int(meta["updates"]),
            server_round=int(meta["server-round"]),
        )
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        logger.warning("dropping unreadable personal state %s: %s", path, exc)
        return None
    if state.mode != mode or state.model_key != key:
        logger.warning(
            "dropping personal state %s: it is for %s of model %s, this run needs %s of model %s",
            path,
            state.mode,
            state.model_key,
            mode,
            key,
        )
        return None
    return state


def save_personal(path: Path, state: PersonalState) -> None:
    """Write ``state`` atomically to ``path``; remove other runs' states and leftovers."""
    meta = {
        "mode": state.mode,
        "model-key": state.model_key,
        "updates": state.updates,
        "server-round": state.server_round,
    }
    entries: dict[str, npt.NDArray[np.generic]] = dict(state.arrays)
    entries[_META_ENTRY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    # other runs' states, and staging files a crash left behind, go
    replace_npz(path, entries, (PERSONAL_GLOB, STAGING_GLOB))


def extract_personal(net: nn.Module, mode: str) -> Arrays:
    """Copies of ``net``'s personal entries under ``mode``, as numpy arrays."""
    state = net.state_dict()
    return {k: state[k].detach().cpu().numpy().copy() for k in personal_keys(net, mode)}


def merge_personal(net: nn.Module, arrays: Arrays) -> None:
    """Overwrite ``net``'s state-dict entries named in ``arrays`` (each in ``net``'s dtype).

    Raises
    ------
    ValueError
        When a name is not in ``net`` or its shape differs; ``net`` is then left unchanged.
    """
    state = net.state_dict()
    for name, value in arrays.items():
        if name not in state or tuple(state[name].shape) != tuple(value.shape):
            raise ValueError(f"personal entry {name} {value.shape} does not fit the model")
    for name, value in arrays.items():
        state[name].copy_(torch.as_tensor(np.asarray(value)).to(state[name].dtype))


@torch.no_grad()
def embed(net: WDCNN, x: npt.NDArray[np.float32]) -> torch.Tensor:
    """The embeddings of windows ``x`` (n, channels, samples) under ``net`` in eval mode."""
    net.eval()
    rows = [
        net(torch.from_numpy(np.ascontiguousarray(x[i : i + EMBED_BATCH], dtype=np.float32)))[1]
        for i in range(0, len(x), EMBED_BATCH)
    ]
    return torch.cat(rows) if rows else torch.zeros((0, net.config.embedding_dim))


def finetune_head(
    net: WDCNN,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> FitResult:
    """Fine-tune ``net``'s classifier head in place on windows ``x``, the body frozen.

    The body runs once, in eval mode (BatchNorm's running statistics, no dropout), to embed the
    windows; the head then trains on those embeddings with Adam and cross-entropy, dropout as
    in the network. A linear head on fixed embeddings is a convex problem: cheap enough for a
    site to run every round.

    Returns
    -------
    FitResult
        Loss and accuracy of the tuned head on the training embeddings (no dropout).
    """
    y = np.asarray(y, np.int64)
    if len(y) < 2 or len(y) != len(x) or batch_size < 2 or epochs < 1:
        raise ValueError("head fine-tuning needs two or more labelled windows, epochs >= 1")
    features = embed(net, x)
    labels = torch.from_numpy(y)
    head, p = net.head, float(net.dropout.p)
    opt = torch.optim.Adam(head.parameters(), lr=learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(len(labels), generator=gen)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                opt.zero_grad()
                logits = head(functional.dropout(features[idx], p, training=True))
                loss: torch.Tensor = loss_fn(logits, labels[idx])
                torch.autograd.backward(loss)
                opt.step()
    with torch.no_grad():
        logits = head(features)
        final_loss = float(loss_fn(logits, labels))
        accuracy = float((logits.argmax(1) == labels).float().mean())
    return FitResult(final_loss, accuracy, len(y))


def before_training(net: WDCNN, cfg: RunConfig, path: Path | None) -> PersonalState | None:
    """Give the received global model the site's own layers before local training.

    Under ``"local-bn"`` the site's saved BatchNorm layers replace the global ones (the caller
    then resets the running statistics, which training re-estimates). Other modes train the
    global model unchanged. Returns the state loaded, if any.
    """
    if cfg.personalisation != "local-bn" or path is None:
        return None
    state = load_personal(path, cfg.personalisation, model_key(net, "local-bn", cfg.class_names))
    if state is not None:
        merge_personal(net, state.arrays)
    return state


def after_training(
    net: WDCNN,
    cfg: RunConfig,
    path: Path | None,
    previous: PersonalState | None,
    server_round: int,
) -> None:
    """Save the site's BatchNorm layers of the model it has just trained (``"local-bn"``)."""
    if cfg.personalisation != "local-bn" or path is None:
        return
    save_personal(
        path,
        PersonalState(
            "local-bn",
            model_key(net, "local-bn", cfg.class_names),
            extract_personal(net, "local-bn"),
            updates=(previous.updates if previous else 0) + 1,
            server_round=server_round,
        ),
    )


def personal_model(
    global_net: WDCNN,
    cfg: RunConfig,
    path: Path,
    x_train: npt.NDArray[np.float32],
    y_train: npt.NDArray[np.int64],
    *,
    server_round: int,
    seed: int,
) -> tuple[WDCNN, int]:
    """The site's personalised model for the received global model, and its state's updates.

    ``"local-bn"``: the global model with the site's saved BatchNorm layers, their statistics
    re-estimated on ``x_train`` for this global body and saved (the global model itself while
    the site has none: 0 updates). ``"local-head"``: the global body with a head
    fine-tuned on ``x_train``, ``y_train`` from the site's saved head (else the global one);
    the tuned head is saved. ``global_net`` is left unchanged.
    """
    net = copy.deepcopy(global_net)
    mode = cfg.personalisation
    key = model_key(net, mode, cfg.class_names)
    state = load_personal(path, mode, key)
    if mode == "local-bn":
        if state is not None:
            merge_personal(net, state.arrays)
            # statistics for the body being evaluated: the saved ones were averaged over the
            # weights of the site's last training pass, not this round's global body (AdaBN)
            recalibrate_norm_statistics(net, x_train)
            state.arrays = extract_personal(net, mode)  # the file holds the model evaluated
            save_personal(path, state)
        return net, state.updates if state else 0
    if mode != "local-head":
        raise ValueError(f"no personal model for personalisation {mode!r}")
    if state is not None:
        merge_personal(net, state.arrays)  # warm start from the site's last head
    finetune_head(
        net,
        x_train,
        y_train,
        epochs=cfg.personal_head_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.personal_head_learning_rate,
        seed=seed,
    )
    updates = (state.updates if state else 0) + 1
    save_personal(
        path,
        PersonalState(mode, key, extract_personal(net, mode), updates, server_round),
    )
    return net, updates


def personal_metrics(
    global_net: WDCNN,
    cfg: RunConfig,
    path: Path | None,
    train: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]],
    held_out: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]],
    *,
    server_round: int,
    seed: int,
) -> dict[str, float]:
    """The personalised model's ``personal-eval-loss``/``-accuracy`` on ``held_out``.

    Also ``personal-updates``: the rounds the site's personal state has seen (0: none yet,
    the figures are the global model's). Empty under ``personalisation = "none"``.
    """
    if cfg.personalisation == "none" or path is None:
        return {}
    net, updates = personal_model(
        global_net, cfg, path, train[0], train[1], server_round=server_round, seed=seed
    )
    result: EvalResult = evaluate(net, held_out[0], held_out[1], cfg.class_names)
    return {
        "personal-eval-loss": result.loss,
        "personal-eval-accuracy": result.accuracy,
        "personal-updates": float(updates),
    }
