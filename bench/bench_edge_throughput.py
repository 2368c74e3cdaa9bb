"""Edge-agent ingest throughput: the most 25.6 kHz channels one agent sustains, vs bare paho.

Run from the repository root (needs the ``mosquitto`` binary)::

    .venv/bin/python -m bench.bench_edge_throughput [--duration 60] [--channels 16,32,48,64,96]
        [--publishers 2] [--flood 12000] [--drain 10] [--profile-frames 3000]

Every sensor channel is one simulated accelerometer sampling at 25.6 kHz and publishing
1024-sample float32 frames (binary codec, 4.2 kB, 25 frames/s) at QoS 1 to a private local
Mosquitto. The real agent runs (``python -m edge_agent``: supervisor, ingest worker,
inference worker) with a model in its registry, so every window is stored and scored. Three
parts, all in one run so that their ratios hold on a noisy machine:

1. **profile**: the :class:`~edge_agent.ingest.Ingestor` in-process on the same frames, one
   commit per frame (the worker before group commit) and one per 128 frames
   (:meth:`LocalStore.batch`, what the worker does now): frames/s of each, their ratio, and
   the top of a cProfile of the group-commit path.
2. **capacity**: ``--flood`` frames queued in Mosquitto for a persistent session, then drained
   (a) by a bare paho subscriber (QoS 1, ``on_message`` does nothing; the baseline) and (b) by
   the agent: messages/s each and the ratio agent / bare (goal: at least 0.5).
3. **sustained**: for each channel count of ``--channels``, ``--publishers`` processes publish
   in real time for ``--duration`` s. A count passes when nothing is lost: every frame the
   broker acknowledged is stored once (frame counters, no sequence gap), the window count is
   exact, and within ``--drain`` s of the end every window is scored. The search stops at the
   first failure. Goal: at least 64 channels (1.64 M samples/s).

The machine's cores are shared by the publishers, Mosquitto, the three agent processes and
this script: on two cores the figures are a floor. ``--duration 10`` gives a quick run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import multiprocessing
import os
import platform
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.queues import Queue
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.ingest import Ingestor
from edge_agent.ingest_worker import BATCH_MAX_MESSAGES, RECEIVE_MAXIMUM
from edge_agent.store import LocalStore
from fedpm.broker import MosquittoBroker
from models.frame import Frame, encode_binary, frame_topic

SITE = "bench"
FS_HZ = 25_600.0
FRAME_SAMPLES = 1024
WINDOW_SAMPLES = 2048
FRAME_NS = 40_000_000  # 1024 / 25.6 kHz, exact
FRAMES_PER_S = FS_HZ / FRAME_SAMPLES  # 25 per channel
T0_NS = 1_700_000_000 * 10**9
CLASSES = ("normal", "inner_race", "outer_race", "ball")


# --- the stream -----------------------------------------------------------------------------


def channel_ids(n: int) -> list[str]:
    """Asset ids of ``n`` single-channel sensors (sensor id ``acc`` on each)."""
    return [f"m{k:03d}" for k in range(n)]


def _signals(n: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(FRAME_SAMPLES) / FS_HZ
    return [
        (0.3 * np.sin(2 * np.pi * (29.9 + k) * t) + 0.05 * rng.standard_normal(FRAME_SAMPLES))
        .astype(np.float32)
        .reshape(1, -1)
        for k in range(n)
    ]


def frame_payload(asset: str, seq: int, signals: list[np.ndarray]) -> bytes:
    frame = Frame(asset, "acc", seq, T0_NS + seq * FRAME_NS, FS_HZ, "g", signals[seq % 8])
    return encode_binary(frame)


def _client(client_id: str = "") -> mqtt.Client:
    return mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )


def _session(receive_maximum: int | None = None) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    return props


class Acks:
    """Counts the PUBACKs a publishing client receives."""

    def __init__(self, client: mqtt.Client) -> None:
        self.count = 0
        self.cond = threading.Condition()
        client.on_publish = self._on_publish

    def _on_publish(self, *args: object) -> None:
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def wait(self, n: int, timeout_s: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.count >= n, timeout_s)


def publish_realtime(
    host: str, port: int, assets: list[str], duration_s: float, start_at: float, out: Queue
) -> None:
    """Publisher process: one frame per asset every 40 ms for ``duration_s``, at QoS 1."""
    signals = _signals()
    client = _client(f"bench-pub-{assets[0]}")
    client.max_inflight_messages_set(100)
    acks = Acks(client)
    client.connect(host, port, clean_start=False, properties=_session())
    client.loop_start()
    topics = [frame_topic(SITE, a, "acc") for a in assets]
    n_ticks = round(duration_s * FRAMES_PER_S)
    late = 0.0
    time.sleep(max(0.0, start_at - time.time()))
    began = time.monotonic()
    for seq in range(n_ticks):
        late = max(late, time.monotonic() - (began + seq * FRAME_NS / 1e9))
        for asset, topic in zip(assets, topics, strict=True):
            client.publish(topic, frame_payload(asset, seq, signals), qos=1)
        pause = began + (seq + 1) * FRAME_NS / 1e9 - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    sent = n_ticks * len(assets)
    acked = acks.wait(sent, 120)
    out.put((len(assets), sent, acks.count, acked, late))
    client.disconnect()
    client.loop_stop()


def preload(host: str, port: int, assets: list[str], n_frames: int) -> float:
    """Publish ``n_frames`` frames round-robin over ``assets`` as fast as the broker takes them."""
    signals = _signals()
    client = _client("bench-preload")
    client.max_inflight_messages_set(100)
    acks = Acks(client)
    client.connect(host, port)
    client.loop_start()
    t = time.perf_counter()
    for k in range(n_frames):
        asset = assets[k % len(assets)]
        client.publish(
            frame_topic(SITE, asset, "acc"),
            frame_payload(asset, k // len(assets), signals),
            qos=1,
        )
        if k % 1000 == 999:
            acks.wait(k - 500, 60)  # keep paho's own queue short
    assert acks.wait(n_frames, 120), "the broker did not acknowledge the preload"
    elapsed = time.perf_counter() - t
    client.disconnect()
    client.loop_stop()
    return n_frames / elapsed


# --- the agent ------------------------------------------------------------------------------


def make_registry(root: Path) -> Path:
    """A registry holding one real exported WDCNN (2048 samples at 25.6 kHz)."""
    from models.metadata import Provenance
    from models.network import NetworkConfig, build_model
    from models.onnx_export import export_onnx, metadata_for
    from models.registry import FileRegistry

    net = build_model(NetworkConfig(n_classes=len(CLASSES), window_samples=WINDOW_SAMPLES), seed=0)
    meta = metadata_for(
        net,
        sample_rate_hz=FS_HZ,
        class_names=CLASSES,
        provenance=Provenance(source="untrained", run_id="bench"),
    )
    registry = FileRegistry(root)
    registry.publish(export_onnx(net, meta), meta, run_id="bench")
    return root


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def start_agent(broker: MosquittoBroker, store: Path, registry: Path | None, log: Path) -> Agent:
    """``python -m edge_agent`` on ``broker``; with ``registry=None`` inference is off."""
    command = [
        sys.executable, "-m", "edge_agent",
        "--site", SITE,
        "--mqtt-port", str(broker.port),
        "--store", str(store),
        "--window-samples", str(WINDOW_SAMPLES),
        "--log-level", "INFO",
    ]  # fmt: skip
    if registry is not None:
        command += ["--registry", str(registry)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    agent = Agent(proc, log)
    wait_online(broker, agent)
    return agent


def wait_online(broker: MosquittoBroker, agent: Agent, timeout_s: float = 60) -> None:
    online = threading.Event()
    client = _client()
    client.on_message = lambda c, u, m: online.set() if m.payload == b"online" else None
    client.on_connect = lambda c, *a: c.subscribe(f"fedpm/v1/{SITE}/agent/status", qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout_s
        while not online.wait(0.2):
            if agent.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent did not come online:\n{agent.log.read_text()}")
    finally:
        client.disconnect()
        client.loop_stop()


@dataclass
class StoreCounts:
    frames: int
    windows: int
    scored: int
    rejects: int
    gaps: int


def counts(store: LocalStore) -> StoreCounts:
    c = store.counters()
    return StoreCounts(
        c.get("frames", 0),
        store.count_windows(),
        store.count_scores(),
        sum(store.rejects().values()),
        c.get("seq_gaps", 0),
    )


@contextlib.contextmanager
def reader(path: Path) -> Iterator[LocalStore]:
    with LocalStore(path, readonly=True) as store:
        yield store


def span_rate(store: LocalStore, sql: str) -> float:
    """Rows per second between the first and last time stamp that ``sql`` selects."""
    with store.reader() as conn:
        n, lo, hi = conn.execute(sql).fetchone()
    return (n - 1) / ((hi - lo) / 1e9) if n and n > 1 and hi > lo else float("nan")


# --- 1. profile -----------------------------------------------------------------------------


def profile_ingestor(n_frames: int, channels: int, workdir: Path) -> dict[str, float]:
    """Frames/s of the Ingestor with one commit per frame vs per batch; prints a profile."""
    signals = _signals()
    assets = channel_ids(channels)
    messages = [
        (frame_topic(SITE, assets[k % channels], "acc"),
         frame_payload(assets[k % channels], k // channels, signals))
        for k in range(n_frames)
    ]  # fmt: skip

    def run(batch: int, tag: str, profiler: cProfile.Profile | None = None) -> float:
        with LocalStore(workdir / f"profile-{tag}.sqlite") as store:
            ingestor = Ingestor(store, SITE, WINDOW_SAMPLES)
            t = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            for i in range(0, n_frames, batch):
                with store.batch():
                    for topic, payload in messages[i : i + batch]:
                        ingestor.handle(topic, payload)
            if profiler is not None:
                profiler.disable()
            rate = n_frames / (time.perf_counter() - t)
            assert store.counters()["frames"] == n_frames
        return rate

    per_frame = run(1, "per-frame")
    grouped = run(BATCH_MAX_MESSAGES, "grouped")
    profiler = cProfile.Profile()
    run(BATCH_MAX_MESSAGES, "profiled", profiler)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
    lines = [ln for ln in text.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if "ncalls" in ln)
    print(f"  cProfile of the group-commit path (top by own time, {n_frames} frames):")
    for ln in lines[start : start + 13]:
        print("   ", ln[:150])
    return {"per_frame": per_frame, "grouped": grouped}


# --- 2. capacity ----------------------------------------------------------------------------


def bare_rate(broker: MosquittoBroker, assets: list[str], n_frames: int) -> float:
    """Messages/s a bare paho subscriber drains a queued backlog of ``n_frames`` at (QoS 1)."""
    client = _client("bench-bare")
    got = {"n": 0, "first": 0.0, "last": 0.0}
    done = threading.Event()

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        got["n"] += 1
        now = time.perf_counter()
        if got["n"] == 1:
            got["first"] = now
        got["last"] = now
        if got["n"] >= n_frames:
            done.set()

    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(broker.host, broker.port, clean_start=True, properties=_session())
    client.loop_start()
    client.subscribe(f"fedpm/v1/{SITE}/+/+/frames", qos=1)
    assert subscribed.wait(10)
    client.disconnect()
    client.loop_stop()
    preload(broker.host, broker.port, assets, n_frames)
    client.on_message = on_message
    client.connect(
        broker.host, broker.port, clean_start=False, properties=_session(RECEIVE_MAXIMUM)
    )
    client.loop_start()
    assert done.wait(300), f"bare subscriber got {got['n']} of {n_frames}"
    client.disconnect()
    client.loop_stop()
    return (n_frames - 1) / (got["last"] - got["first"])


def agent_rate(
    broker: MosquittoBroker,
    assets: list[str],
    n_frames: int,
    registry: Path | None,
    workdir: Path,
) -> dict[str, float]:
    """Messages/s the agent drains a queued backlog at, and windows/s its inference scores."""
    tag = "full" if registry is not None else "ingest"
    store_path = workdir / f"flood-{tag}.sqlite"
    log = workdir / f"flood-{tag}.log"
    agent = start_agent(broker, store_path, registry, log)
    agent.stop()  # its session now exists and queues what follows
    preload(broker.host, broker.port, assets, n_frames)
    agent = start_agent(broker, store_path, registry, log)
    per_asset = [len(range(k, n_frames, len(assets))) for k in range(len(assets))]
    expected_windows = sum(n * FRAME_SAMPLES // WINDOW_SAMPLES for n in per_asset)
    to_score = expected_windows if registry is not None else 0
    try:
        with reader(store_path) as store:
            deadline = time.monotonic() + 600
            while (c := counts(store)).scored < to_score or c.windows < expected_windows:
                if time.monotonic() > deadline or agent.proc.poll() is not None:
                    raise RuntimeError(
                        f"flood not drained ({expected_windows} windows expected): {c}, agent"
                        f" exit {agent.proc.poll()}\n{agent.log.read_text()}"
                    )
                time.sleep(0.2)
            windows_s = span_rate(
                store, "SELECT count(*), min(created_ns), max(created_ns) FROM windows"
            )
            frames_s = windows_s * WINDOW_SAMPLES / FRAME_SAMPLES
            scored_s = span_rate(
                store, "SELECT count(*), min(scored_ns), max(scored_ns) FROM scores"
            )
    finally:
        agent.stop()
    return {"frames_s": frames_s, "scored_s": scored_s}


# --- 3. sustained ---------------------------------------------------------------------------


@dataclass
class Trial:
    channels: int
    published: int
    acked: int
    stored: StoreCounts
    expected_windows: int
    max_lag_s: float
    drain_s: float
    publisher_late_s: float

    @property
    def lossless(self) -> bool:
        """Every frame the broker acknowledged is stored once, every window is there."""
        s = self.stored
        return (
            self.acked == self.published
            and s.frames == self.published
            and s.windows == self.expected_windows
            and s.gaps == 0
            and s.rejects == 0
        )

    @property
    def passed(self) -> bool:
        """Lossless, and inference scored every window within the drain period."""
        return self.lossless and self.stored.scored == self.stored.windows

    @property
    def verdict(self) -> str:
        if self.passed:
            return "pass"
        return "inference behind" if self.lossless else "LOSS"


def sustained(channels: int, args: argparse.Namespace, registry: Path, workdir: Path) -> Trial:
    ctx = multiprocessing.get_context("spawn")
    with MosquittoBroker() as broker:
        store_path = workdir / f"sustained-{channels}.sqlite"
        agent = start_agent(broker, store_path, registry, workdir / f"agent-{channels}.log")
        try:
            out: Queue = ctx.Queue()
            assets = channel_ids(channels)
            groups = [assets[i :: args.publishers] for i in range(args.publishers)]
            start_at = time.time() + 3.0  # publishers import and connect first
            procs = [
                ctx.Process(
                    target=publish_realtime,
                    args=(broker.host, broker.port, g, args.duration, start_at, out),
                )
                for g in groups
                if g
            ]
            for p in procs:
                p.start()
            max_lag = 0.0
            rate = channels * FRAMES_PER_S
            with reader(store_path) as store:
                time.sleep(max(0.0, start_at - time.time()))
                began = time.monotonic()
                while (elapsed := time.monotonic() - began) < args.duration:
                    time.sleep(1.0)
                    backlog = rate * min(elapsed, args.duration) - counts(store).frames
                    max_lag = max(max_lag, backlog / rate)
                results = [out.get(timeout=180) for _ in procs]
                for p in procs:
                    p.join(30)
                published = sum(r[1] for r in results)
                acked = sum(r[2] for r in results)
                late = max(r[4] for r in results)
                per_channel = round(args.duration * FRAMES_PER_S)
                expected_windows = channels * (per_channel * FRAME_SAMPLES // WINDOW_SAMPLES)
                ended = time.monotonic()
                while True:
                    c = counts(store)
                    done = c.frames >= published and c.scored >= expected_windows
                    if done or time.monotonic() - ended > args.drain:
                        break
                    time.sleep(0.2)
                drain = time.monotonic() - ended
                c = counts(store)
        finally:
            agent.stop()
    return Trial(channels, published, acked, c, expected_windows, max_lag, drain, late)


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="s per channel count")
    parser.add_argument("--channels", default="16,32,48,64,96,128", help="counts to try")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--flood", type=int, default=12_000, help="frames for the capacity part")
    parser.add_argument("--drain", type=float, default=10.0, help="s allowed after the stream")
    parser.add_argument("--profile-frames", type=int, default=3000)
    parser.add_argument("--skip", default="", help="parts to skip: profile,capacity,sustained")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    counts_to_try = [int(c) for c in args.channels.split(",")]
    print(
        f"stream: {FS_HZ / 1000:g} kHz channels, {FRAME_SAMPLES}-sample float32 frames, QoS 1;"
        f" window {WINDOW_SAMPLES}; group commit {BATCH_MAX_MESSAGES}, receive maximum"
        f" {RECEIVE_MAXIMUM} | python {platform.python_version()} | {os.cpu_count()} CPUs"
        f" | load {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory(prefix="fedpm-bench-edge-") as tmp:
        workdir = Path(tmp)
        registry = make_registry(workdir / "registry")

        if "profile" not in skip:
            print("\n1. Ingestor in-process (decode, window, store), 64 channels")
            p = profile_ingestor(args.profile_frames, 64, workdir)
            print(
                f"  one commit per frame: {p['per_frame']:,.0f} frames/s;"
                f" per {BATCH_MAX_MESSAGES} frames: {p['grouped']:,.0f} frames/s"
                f" ({p['grouped'] / p['per_frame']:.2f}x)"
            )

        if "capacity" not in skip:
            print(f"\n2. Capacity: a queued backlog of {args.flood} frames over 64 channels")
            assets = channel_ids(64)
            with MosquittoBroker() as broker:
                bare = bare_rate(broker, assets, args.flood)
            with MosquittoBroker() as broker:
                ingest = agent_rate(broker, assets, args.flood, None, workdir)
            with MosquittoBroker() as broker:
                agent = agent_rate(broker, assets, args.flood, registry, workdir)
            print(f"  bare paho subscriber (QoS 1, no work): {bare:,.0f} msg/s")
            for name, r in (("agent, inference off", ingest), ("agent with inference", agent)):
                print(
                    f"  {name}: {r['frames_s']:,.0f} msg/s"
                    f" = {r['frames_s'] * FRAME_SAMPLES / 1e6:.2f} M samples/s"
                    f" = {r['frames_s'] / FRAMES_PER_S:.0f} channels"
                    + (f"; inference {r['scored_s']:,.0f} windows/s" if r is agent else "")
                )
            print(
                f"  agent / bare: {agent['frames_s'] / bare:.2f} with inference,"
                f" {ingest['frames_s'] / bare:.2f} without (goal >= 0.5)"
            )

        if "sustained" not in skip:
            print(f"\n3. Sustained real-time stream, {args.duration:g} s per channel count")
            print(
                f"{'channels':>9}{'Msamp/s':>9}{'published':>10}{'stored':>9}{'windows':>9}"
                f"{'scored':>9}{'max lag s':>10}{'drain s':>8}{'pub late s':>11}  verdict"
            )
            best = 0
            for n in counts_to_try:
                t = sustained(n, args, registry, workdir)
                s = t.stored
                print(
                    f"{n:>9}{n * FS_HZ / 1e6:>9.2f}{t.published:>10}{s.frames:>9}{s.windows:>9}"
                    f"{s.scored:>9}{t.max_lag_s:>10.2f}{t.drain_s:>8.1f}"
                    f"{t.publisher_late_s:>11.2f}  {t.verdict}"
                )
                if not t.passed:
                    break
                best = n
            print(
                f"  most channels sustained (zero loss, every window scored): {best}"
                f" = {best * FS_HZ / 1e6:.2f} M samples/s (goal >= 64)"
            )


if __name__ == "__main__":
    main()
