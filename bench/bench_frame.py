"""Encode+decode throughput of the binary and JSON sensor-frame forms.

Run from the repository root::

    .venv/bin/python -m bench.bench_frame [--samples 1024] [--seconds 1.0] [--repeat 3]

For one single-channel frame of ``--samples`` float32 samples (a 160 Hz sine plus noise at
12.8 kHz, as an accelerometer gives), each form is timed over ``encode`` then ``decode`` round
trips for about ``--seconds`` per repeat; the best repeat is kept. Both forms are measured in the
same run, so their ratio is meaningful even on a noisy machine. MB/s are 10**6 bytes a second:
"wire" counts the encoded payload, "samples" the raw float32 data it carries.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np

from models.frame import Frame, decode, encode_binary, encode_json

Encoder = Callable[[Frame], bytes]


def make_frame(n_samples: int, fs: float = 12_800.0) -> Frame:
    rng = np.random.default_rng(0)
    t = np.arange(n_samples) / fs
    samples = 0.5 * np.sin(2 * np.pi * 160.0 * t) + 0.05 * rng.standard_normal(n_samples)
    return Frame("pump-07", "acc-01", 1, 1_700_000_000_000_000_000, fs, "g", samples)


def rate(operation: Callable[[], object], seconds: float, repeat: int) -> float:
    """Best operations per second over ``repeat`` runs of about ``seconds`` each."""
    operation()  # warm up
    best = 0.0
    for _ in range(repeat):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for _ in range(50):
                operation()
            count += 50
        best = max(best, count / elapsed)
    return best


def measure(encode: Encoder, frame: Frame, seconds: float, repeat: int) -> dict[str, float]:
    payload = encode(frame)
    assert np.array_equal(decode(payload).samples, frame.samples)
    round_trips = rate(lambda: decode(encode(frame)), seconds, repeat)
    encodes = rate(lambda: encode(frame), seconds / 2, repeat)
    decodes = rate(lambda: decode(payload), seconds / 2, repeat)
    return {
        "bytes": len(payload),
        "frames_s": round_trips,
        "wire_mb_s": round_trips * len(payload) / 1e6,
        "samples_mb_s": round_trips * frame.samples.nbytes / 1e6,
        "encode_us": 1e6 / encodes,
        "decode_us": 1e6 / decodes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    frame = make_frame(args.samples)
    print(
        f"frame: 1 channel x {args.samples} float32 samples | python {platform.python_version()}"
        f" | numpy {np.__version__} | {platform.machine()}"
    )
    results = {
        name: measure(encode, frame, args.seconds, args.repeat)
        for name, encode in (("binary", encode_binary), ("json", encode_json))
    }
    print(
        f"{'form':<7}{'bytes':>8}{'frames/s':>11}{'MB/s wire':>11}{'MB/s samples':>14}"
        f"{'encode us':>11}{'decode us':>11}"
    )
    for name, r in results.items():
        print(
            f"{name:<7}{r['bytes']:>8.0f}{r['frames_s']:>11.0f}{r['wire_mb_s']:>11.1f}"
            f"{r['samples_mb_s']:>14.1f}{r['encode_us']:>11.1f}{r['decode_us']:>11.1f}"
        )
    binary, json_ = results["binary"], results["json"]
    print(
        f"binary/json: {binary['frames_s'] / json_['frames_s']:.1f}x frames/s (encode+decode), "
        f"{json_['bytes'] / binary['bytes']:.2f}x smaller on the wire"
    )


if __name__ == "__main__":
    main()
