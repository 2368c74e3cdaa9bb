"""Helpers for the edge-agent tests: real signals, frames, models, polling."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import torch

from models.frame import HEADER_SIZE, Frame, encode_binary
from models.metadata import ModelMetadata, Provenance
from models.network import NetworkConfig, build_model
from models.onnx_export import export_onnx, metadata_for

FS_HZ = 12_000.0
CLASSES = ("normal", "inner_race", "outer_race", "ball")
# as tests/conftest.py looks for it: $FEDPM_CWRU_DIR, else ../shared/datasets beside the checkout
CWRU_DIR = Path(
    os.environ.get("FEDPM_CWRU_DIR")
    or Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cwru-12k-drive-end"
)
T0_NS = 1_700_000_000 * 1_000_000_000


def cwru_or_synthetic(n: int, name: str = "normal_0_97.npz") -> np.ndarray:
    """``n`` drive-end samples (g, 12 kHz) of a CWRU record, or a synthetic stand-in."""
    path = CWRU_DIR / name
    if path.is_file():
        with np.load(path) as data:
            de = np.asarray(data["de"], dtype=np.float32)
        if len(de) >= n:
            return de[:n]
    t = np.arange(n) / FS_HZ
    rng = np.random.default_rng(0)
    x = 0.1 * np.sin(2 * np.pi * 29.95 * t) + 0.02 * rng.standard_normal(n)
    return x.astype(np.float32)


def make_frames(
    x: np.ndarray,
    frame_samples: int,
    *,
    asset: str = "pump-1",
    sensor: str = "acc-1",
    fs: float = FS_HZ,
    first_seq: int = 0,
    t0_ns: int = T0_NS,
    units: str = "g",
) -> list[Frame]:
    """Cut ``x`` (channels, n) or (n,) into contiguous frames with exact timestamps."""
    x2 = np.atleast_2d(np.asarray(x, dtype=np.float32))
    frames = []
    for k in range(x2.shape[1] // frame_samples):
        start = k * frame_samples
        ts = t0_ns + round(start * 1e9 / fs)
        chunk = x2[:, start : start + frame_samples]
        frames.append(Frame(asset, sensor, first_seq + k, ts, fs, units, chunk))
    return frames


def with_nan_sample(frame: Frame) -> bytes:
    """A binary frame whose first sample is NaN, with a valid CRC (only the value is bad)."""
    raw = bytearray(encode_binary(frame))
    names_len = 0
    strings = len(frame.asset_id) + len(frame.sensor_id) + len(frame.units) + names_len
    data_start = HEADER_SIZE + strings + (-(HEADER_SIZE + strings) % 4)
    raw[data_start : data_start + 4] = np.array([np.nan], dtype="<f4").tobytes()
    raw[-4:] = zlib.crc32(bytes(raw[:-4])).to_bytes(4, "little")
    return bytes(raw)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        time.sleep(0.05)


@dataclass(frozen=True)
class Exported:
    metadata: ModelMetadata
    data: bytes


def export_model(bias_class: int | None, window: int) -> Exported:
    net = build_model(NetworkConfig(n_classes=len(CLASSES), window_samples=window), seed=0)
    if bias_class is not None:  # a model that always answers ``bias_class``
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.zero_()
            net.head.bias[bias_class] = 10.0
    meta = metadata_for(
        net,
        sample_rate_hz=FS_HZ,
        class_names=CLASSES,
        provenance=Provenance(source="untrained", run_id="edge-test"),
    )
    return Exported(meta, export_onnx(net, meta))


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class MqttProbe:
    """A test-side paho client: publishes with QoS 1 and records what it receives."""

    client: mqtt.Client
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, topic: str, payload: bytes, *, wait: bool = True) -> None:
        info = self.client.publish(topic, payload, qos=1)
        if wait:
            info.wait_for_publish(timeout=10)

    def subscribe(self, topic_filter: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe(topic_filter, qos=1)
        assert done.wait(10), f"no SUBACK for {topic_filter}"

    def received(self, topic: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic]


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the agent and its workers
            self.proc.wait()
            raise AssertionError(f"agent did not stop on signal {sig}:\n{self.log()}") from None


def wait_online(probe: MqttProbe, agent: AgentProcess, site: str, timeout_s: float = 30) -> None:
    """Subscribe to the site's status topic and wait for the agent's retained ``online``."""
    topic = f"fedpm/v1/{site}/agent/status"
    probe.subscribe(topic)
    try:
        wait_until(lambda: any(m.payload == b"online" for m in probe.received(topic)), timeout_s)
    except AssertionError:
        raise AssertionError(f"agent never came online:\n{agent.log()}") from None
