"""int8 update codec with error feedback (models.compression)."""

from __future__ import annotations

import numpy as np
import pytest

from models.compression import (
    CompressionError,
    EncodedUpdate,
    decode_update,
    dequantise,
    encode_update,
    layout_fingerprint,
    quantise,
)
from models.network import build_model


def _model() -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in build_model(seed=0).state_dict().items()}


def _trained(reference: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A plausible local model: every float tensor moved by a small random step."""
    out = {}
    for name, ref in reference.items():
        if ref.dtype.kind == "f":
            step = rng.normal(0.0, 1e-2, ref.shape) * rng.uniform(0.1, 10.0)
            out[name] = (ref + step).astype(ref.dtype)
        else:
            out[name] = ref + 7  # num_batches_tracked after seven local batches
    return out


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_quantise_round_trip_error_is_at_most_half_a_step(dtype: type) -> None:
    # Prepare
    rng = np.random.default_rng(1)
    values = (rng.standard_t(3, size=(64, 3, 5)) * 0.01).astype(dtype)

    # Execute
    q, scale = quantise(values)
    restored = dequantise(q, scale)

    # Assert
    assert q.dtype == np.int8
    assert q.shape == values.shape
    assert q.min() >= -127
    assert q.max() <= 127
    assert np.abs(q).max() == 127  # the largest magnitude uses the full range
    assert float(scale) == pytest.approx(np.abs(values.astype(np.float64)).max() / 127, rel=1e-6)
    err = np.abs(values.astype(np.float64) - restored)
    assert err.max() <= float(scale) / 2 * (1 + 1e-6)


def test_quantise_maps_zero_to_zero_and_handles_empty_and_constant() -> None:
    # Execute
    q_zero, s_zero = quantise(np.zeros((4, 4), np.float32))
    q_empty, s_empty = quantise(np.zeros(0, np.float32))
    q_mixed, s_mixed = quantise(np.array([0.0, 2.0, -2.0], np.float32))

    # Assert
    assert not q_zero.any()
    assert s_zero == 0
    assert q_empty.size == 0
    assert s_empty == 0
    assert q_mixed.tolist() == [0, 127, -127]
    assert dequantise(q_mixed, s_mixed).tolist() == pytest.approx([0.0, 2.0, -2.0], rel=1e-6)


def test_encode_decode_round_trip_on_the_wdcnn() -> None:
    # Prepare
    reference = _model()
    local = _trained(reference, np.random.default_rng(2))

    # Execute
    encoded, residual = encode_update(local, reference)
    decoded = decode_update(encoded, reference)

    # Assert: float tensors within half a step of their own scale; others exact
    assert list(decoded) == list(reference)
    floats = [k for k, v in reference.items() if v.dtype.kind == "f"]
    assert encoded.scales.shape == (len(floats),)
    assert encoded.q.size == sum(reference[k].size for k in floats)
    for i, name in enumerate(floats):
        assert decoded[name].dtype == reference[name].dtype
        err = np.abs(decoded[name].astype(np.float64) - local[name].astype(np.float64))
        assert err.max() <= float(encoded.scales[i]) / 2 + 1e-6  # + float32 rounding
        # the residual is exactly what the decoder did not get
        np.testing.assert_allclose(
            residual[name], local[name].astype(np.float64) - decoded[name], atol=1e-6
        )


def test_integer_buffers_pass_through_unchanged() -> None:
    # Prepare
    reference = _model()
    local = _trained(reference, np.random.default_rng(3))
    ints = [k for k, v in reference.items() if v.dtype.kind != "f"]
    assert ints, "the WDCNN has BatchNorm num_batches_tracked buffers"

    # Execute
    encoded, residual = encode_update(local, reference)
    decoded = decode_update(encoded, reference)

    # Assert
    for name in ints:
        assert decoded[name].dtype == reference[name].dtype
        np.testing.assert_array_equal(decoded[name], local[name])
        assert name not in residual
    assert encoded.ints.tolist() == [int(local[k]) for k in ints]


def test_a_buffer_that_fedavg_made_float_travels_quantised() -> None:
    # Prepare: FedAvg averages int64 num_batches_tracked into float64; the site's is int64
    reference = {"w": np.zeros(4, np.float32), "n": np.array(23.5)}
    local = {"w": np.full(4, 0.5, np.float32), "n": np.array(24, np.int64)}

    # Execute
    encoded, _ = encode_update(local, reference)
    decoded = decode_update(encoded, reference)

    # Assert: classified by the global dtype, decoded in it
    assert encoded.ints.size == 0
    assert encoded.scales.shape == (2,)
    assert decoded["n"].dtype == np.float64
    assert float(decoded["n"]) == pytest.approx(24.0, abs=0.5 / 127)


def test_payload_is_a_quarter_of_float32() -> None:
    # Prepare
    reference = _model()
    float32_bytes = sum(v.nbytes for v in reference.values())

    # Execute
    encoded, _ = encode_update(_trained(reference, np.random.default_rng(4)), reference)

    # Assert: int8 values + one float32 scale per tensor + 8 bytes per int buffer
    assert encoded.nbytes / float32_bytes < 0.26


def test_error_feedback_keeps_the_accumulated_error_bounded() -> None:
    # Prepare: 200 rounds; a few large entries set the scale (1/127) and the rest drift by a
    # steady 1e-3 per round, below half a step: without feedback they would round to zero
    rng = np.random.default_rng(5)
    reference = {"w": np.zeros(1000, np.float32), "b": np.zeros(10, np.float32)}
    true_sum = {k: np.zeros(v.shape) for k, v in reference.items()}
    fed_sum = {k: np.zeros(v.shape) for k, v in reference.items()}
    plain_sum = {k: np.zeros(v.shape) for k, v in reference.items()}
    residual = None
    last_scales = np.zeros(2)

    # Execute
    for _ in range(200):
        update = {k: 1e-3 + rng.normal(0, 1e-4, v.shape) for k, v in reference.items()}
        update["w"][:3] = rng.choice([-1.0, 1.0], 3)
        local = {k: (reference[k] + update[k]).astype(np.float32) for k in reference}
        encoded, residual = encode_update(local, reference, residual)
        plain, _ = encode_update(local, reference)
        for k in reference:
            true_sum[k] += local[k].astype(np.float64) - reference[k]
            fed_sum[k] += decode_update(encoded, reference)[k].astype(np.float64) - reference[k]
            plain_sum[k] += decode_update(plain, reference)[k].astype(np.float64) - reference[k]
        last_scales = encoded.scales.astype(np.float64)

    # Assert: with feedback the sums differ by the last residual only (<= half a step, plus
    # float32 rounding of each decoded model); without it, the small entries' drift is lost
    for i, k in enumerate(reference):
        fed_err = np.abs(fed_sum[k] - true_sum[k]).max()
        assert fed_err <= last_scales[i] / 2 + 200 * 1e-7
        np.testing.assert_allclose(true_sum[k] - fed_sum[k], residual[k], atol=200 * 1e-7)
    plain_err = np.abs(plain_sum["w"] - true_sum["w"]).max()
    assert plain_err > 0.15  # ~200 x 1e-3 lost
    assert plain_err > 20 * np.abs(fed_sum["w"] - true_sum["w"]).max()


def test_layout_fingerprint_tells_models_apart() -> None:
    # Prepare
    a = {"w": np.zeros((2, 3), np.float32), "n": np.zeros((), np.int64)}
    reshaped = {"w": np.zeros((3, 2), np.float32), "n": np.zeros((), np.int64)}
    retyped = {"w": np.zeros((2, 3), np.float64), "n": np.zeros((), np.int64)}
    reordered = {"n": np.zeros((), np.int64), "w": np.zeros((2, 3), np.float32)}

    # Execute
    prints = {layout_fingerprint(m) for m in (a, reshaped, retyped, reordered)}

    # Assert
    assert len(prints) == 4
    assert layout_fingerprint(a) == layout_fingerprint({k: v + 1 for k, v in a.items()})


def test_bad_input_is_refused_with_a_clear_error() -> None:
    # Prepare
    reference = {"w": np.zeros(4, np.float32), "n": np.zeros((), np.int64)}
    good = {"w": np.ones(4, np.float32), "n": np.ones((), np.int64)}
    encoded, _ = encode_update(good, reference)

    # Execute / Assert
    with pytest.raises(CompressionError, match="NaN or Inf"):
        encode_update({"w": np.array([0, np.nan, 0, 0], np.float32), "n": good["n"]}, reference)
    with pytest.raises(CompressionError, match="missing"):
        encode_update({"w": good["w"]}, reference)
    with pytest.raises(CompressionError, match=r"tensor 'w'"):
        encode_update({"w": np.ones(5, np.float32), "n": good["n"]}, reference)
    with pytest.raises(CompressionError, match="residual"):
        encode_update(good, reference, {"w": np.zeros(3)})
    with pytest.raises(CompressionError, match="complex64"):
        encode_update({"c": np.ones(2, np.complex64)}, {"c": np.ones(2, np.float32)})
    with pytest.raises(CompressionError, match="dtype complex64"):
        encode_update({"c": np.ones(2, np.float32)}, {"c": np.ones(2, np.complex64)})
    with pytest.raises(CompressionError, match="non-integer"):
        encode_update({"w": good["w"], "n": np.array(2.5)}, reference)
    with pytest.raises(CompressionError, match="layout"):
        decode_update(encoded, {"w": np.zeros(5, np.float32), "n": reference["n"]})
    short = EncodedUpdate(encoded.q[:3], encoded.scales, encoded.ints, encoded.layout)
    with pytest.raises(CompressionError, match="holds 3 values"):
        decode_update(short, reference)
    widened = EncodedUpdate(
        encoded.q.astype(np.int16),
        encoded.scales,
        encoded.ints,
        encoded.layout,  # type: ignore[arg-type]
    )
    with pytest.raises(CompressionError, match="must be int8"):
        decode_update(widened, reference)
    nan_scale = EncodedUpdate(
        encoded.q, np.array([np.nan], np.float32), encoded.ints, encoded.layout
    )
    with pytest.raises(CompressionError, match="scales must be finite"):
        decode_update(nan_scale, reference)
