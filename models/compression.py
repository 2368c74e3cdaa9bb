"""8-bit quantisation of federated model updates, with error feedback.

A site sends the server the *update* of a round (its locally trained weights minus the global
weights it received), not the weights: updates are small, centred on zero and tolerate coarse
quantisation, while the weights themselves would lose the global model's precision.

Codec ``int8-ef``, per tensor, symmetric::

    scale = max(|u|) / 127            (float32; 0 for an all-zero update)
    q     = clip(round(u / scale), -127, 127)    (int8)
    u'    = q * scale                 |u - u'| <= scale / 2 element-wise

Symmetric rather than asymmetric (a zero point): updates are centred on zero, so an affine
code would gain at most one bit on a lopsided tensor while costing a zero point per tensor and
no longer mapping an unchanged weight to exactly zero. ``-128`` is never used, so the code is
symmetric and ``-q`` is always representable.

Error feedback (Seide et al., 2014; Karimireddy et al., "Error feedback fixes SignSGD", 2019):
what quantisation dropped in round *t* (the residual ``e``) is added to the update of round
*t + 1* before quantising, so nothing is lost for good; the sum of the decoded updates over any
number of rounds differs from the sum of the true updates by the last residual only, at most
half a quantisation step per element.

Only floating-point tensors are quantised; integer and boolean buffers (BatchNorm's
``num_batches_tracked``) pass through unchanged, as the local values. Which is which follows
the *global* tensor's dtype, the one thing both ends know: Flower's FedAvg returns integer
buffers as float64 averages, so from round 2 on ``num_batches_tracked`` arrives as a float
and travels quantised like any other float (the decoder gives back the global's dtypes).

The quantised tensors travel as one flat int8 vector and one float32 vector of scales, the
pass-through tensors as one flat int64 vector, all in the order of the global model's keys,
plus a fingerprint of that layout: per-tensor arrays would each carry a header and a name,
which at this model's size (32 tensors, 34.5 k parameters) costs more than the int8 payload
leaves under 26 % of the float32 bytes.

Everything here is pure numpy: no Flower, no I/O. ``edge_agent.fl_mods`` (client) and
``aggregator.compression`` (server) carry it in Flower records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.errors import SignalError

CODEC = "int8-ef"
QMAX = 127

Arrays = Mapping[str, npt.NDArray[np.generic]]


class CompressionError(SignalError):
    """An update that cannot be encoded or decoded (mismatched layout, non-finite values)."""


@dataclass(frozen=True)
class EncodedUpdate:
    """A model update in the ``int8-ef`` codec.

    Attributes
    ----------
    q
        Every floating-point tensor's quantised update, flattened and concatenated (int8).
    scales
        One float32 scale per floating-point tensor, in the same order.
    ints
        Every integer or boolean tensor (local values, unchanged), flattened and concatenated
        as int64.
    layout
        Fingerprint of the reference model's names, shapes and dtypes (see
        :func:`layout_fingerprint`); the decoder refuses another layout.
    """

    q: npt.NDArray[np.int8]
    scales: npt.NDArray[np.float32]
    ints: npt.NDArray[np.int64]
    layout: str

    @property
    def nbytes(self) -> int:
        """Payload bytes (int8 values, scales and pass-through values), without framing."""
        return int(self.q.nbytes) + int(self.scales.nbytes) + int(self.ints.nbytes)


def is_quantised(array: npt.NDArray[np.generic]) -> bool:
    """Whether the codec quantises ``array`` (floating point) or passes it through.

    Raises
    ------
    CompressionError
        For dtypes the codec carries neither way (complex, objects, strings).
    """
    kind = array.dtype.kind
    if kind == "f":
        return True
    if kind in "iub":
        return False
    raise CompressionError(f"cannot carry a tensor of dtype {array.dtype} in an update")


def layout_fingerprint(reference: Arrays, *, dtypes: bool = True) -> str:
    """A short hash of the names, shapes and (optionally) dtypes of ``reference``, in order.

    Parameters
    ----------
    reference
        The model's tensors by name (a state dict as numpy arrays).
    dtypes
        Include the dtypes (the codec's layout). Without them the hash names the model's
        shape only, which a residual needs: FedAvg turns integer buffers into float64 after
        round 1, and the residual of the float tensors stays valid across that change.

    Returns
    -------
    str
        16 hex digits; equal for two models exactly when their layouts are equal.
    """
    text = ";".join(
        f"{k}:{tuple(v.shape)}" + (f":{v.dtype.str}" if dtypes else "")
        for k, v in reference.items()
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def quantise(values: npt.NDArray[np.floating]) -> tuple[npt.NDArray[np.int8], np.float32]:
    """Quantise one tensor symmetrically to int8.

    Parameters
    ----------
    values
        Finite floating-point values, any shape.

    Returns
    -------
    q, scale
        ``q`` (int8, same shape, in ``[-127, 127]``) and the float32 ``scale`` with
        ``|values - q * scale| <= scale / 2``; ``scale`` is 0 for an all-zero tensor.

    Examples
    --------
    >>> q, s = quantise(np.array([0.0, 0.5, -1.27]))
    >>> q.tolist(), float(s)
    ([0, 50, -127], 0.009999999776482582)
    """
    x = np.asarray(values, dtype=np.float64)
    if not np.isfinite(x).all():
        raise CompressionError("cannot quantise an update holding NaN or Inf")
    peak = float(np.abs(x).max()) if x.size else 0.0
    scale = np.float32(peak / QMAX)
    if scale == 0:
        return np.zeros(x.shape, np.int8), np.float32(0.0)
    q = np.clip(np.rint(x / np.float64(scale)), -QMAX, QMAX).astype(np.int8)
    return q, scale


def dequantise(q: npt.NDArray[np.int8], scale: float | np.float32) -> npt.NDArray[np.float64]:
    """The values ``q * scale`` that :func:`quantise` stands for (float64)."""
    return np.asarray(q, dtype=np.float64) * np.float64(scale)


def _check_pair(local: Arrays, reference: Arrays) -> None:
    if list(local) != list(reference):
        missing = sorted(set(reference) - set(local))
        extra = sorted(set(local) - set(reference))
        raise CompressionError(
            "local and global models differ in tensors "
            f"(missing {missing[:3]}, unexpected {extra[:3]}, or another order)"
        )
    for name, ref in reference.items():
        arr = local[name]
        if arr.shape != ref.shape or arr.dtype.kind not in "fiub":
            raise CompressionError(
                f"tensor {name!r}: local {arr.dtype}{tuple(arr.shape)} "
                f"vs global {ref.dtype}{tuple(ref.shape)}"
            )


def encode_update(
    local: Arrays, reference: Arrays, residual: Arrays | None = None
) -> tuple[EncodedUpdate, dict[str, npt.NDArray[np.float64]]]:
    """Encode ``local - reference`` (plus the carried ``residual``) in the ``int8-ef`` codec.

    Parameters
    ----------
    local
        The locally trained tensors by name.
    reference
        The global tensors the site received this round (same names, order and shapes; a
        dtype may differ, e.g. an int64 buffer that FedAvg turned into a float64 average).
    residual
        What quantisation dropped last round (float64, per floating-point tensor), or None.
        A tensor without an entry carries nothing (it was not quantised last round).

    Returns
    -------
    encoded, residual
        The encoded update and the new residual to carry into the next round.

    Raises
    ------
    CompressionError
        Mismatched layouts, a residual for another layout, or non-finite values.
    """
    _check_pair(local, reference)
    parts: list[npt.NDArray[np.int8]] = []
    scales: list[np.float32] = []
    ints: list[npt.NDArray[np.int64]] = []
    new_residual: dict[str, npt.NDArray[np.float64]] = {}
    for name, ref in reference.items():
        if not is_quantised(ref):
            as_int = np.asarray(local[name]).astype(np.int64).ravel()
            if not np.array_equal(as_int, np.asarray(local[name]).ravel()):
                raise CompressionError(f"integer tensor {name!r} holds non-integer values")
            ints.append(as_int)
            continue
        target = np.asarray(local[name], np.float64) - np.asarray(ref, np.float64)
        if residual is not None:
            carried = residual.get(name)
            if carried is not None and carried.shape != ref.shape:
                raise CompressionError(f"residual does not match tensor {name!r}")
            if carried is not None:
                target = target + np.asarray(carried, np.float64)
        q, scale = quantise(target)
        parts.append(q.ravel())
        scales.append(scale)
        new_residual[name] = target - dequantise(q, scale)
    encoded = EncodedUpdate(
        q=np.concatenate(parts) if parts else np.zeros(0, np.int8),
        scales=np.asarray(scales, np.float32),
        ints=np.concatenate(ints) if ints else np.zeros(0, np.int64),
        layout=layout_fingerprint(reference),
    )
    return encoded, new_residual


def decode_update(encoded: EncodedUpdate, reference: Arrays) -> dict[str, npt.NDArray[np.generic]]:
    """Rebuild full tensors: ``reference + q * scale``, in the reference's dtypes.

    Parameters
    ----------
    encoded
        An update from :func:`encode_update` against this very ``reference``.
    reference
        The global tensors the update was computed against.

    Returns
    -------
    dict
        The site's model as the server sees it, in ``reference``'s order and dtypes;
        pass-through tensors as sent.

    Raises
    ------
    CompressionError
        Another layout, or too few or too many values or scales.
    """
    if encoded.layout != layout_fingerprint(reference):
        raise CompressionError(
            f"update was encoded for model layout {encoded.layout}, "
            f"not this global model's {layout_fingerprint(reference)}"
        )
    floats = [ref for ref in reference.values() if is_quantised(ref)]
    n_float = sum(int(ref.size) for ref in floats)
    n_int = sum(int(ref.size) for ref in reference.values()) - n_float
    if (encoded.q.shape, encoded.scales.shape, encoded.ints.shape) != (
        (n_float,),
        (len(floats),),
        (n_int,),
    ):
        raise CompressionError(
            f"update holds {encoded.q.size} values, {encoded.scales.size} scales and "
            f"{encoded.ints.size} integers; the model needs {n_float}, {len(floats)} and {n_int}"
        )
    if encoded.q.dtype != np.int8 or encoded.ints.dtype != np.int64:
        raise CompressionError("update values must be int8 and pass-through values int64")
    if not np.isfinite(encoded.scales).all() or (encoded.scales < 0).any():
        raise CompressionError("update scales must be finite and non-negative")
    out: dict[str, npt.NDArray[np.generic]] = {}
    offset = index = int_offset = 0
    for name, ref in reference.items():
        n = int(ref.size)
        if not is_quantised(ref):
            chunk = encoded.ints[int_offset : int_offset + n]
            out[name] = chunk.astype(ref.dtype).reshape(ref.shape)
            int_offset += n
            continue
        delta = dequantise(encoded.q[offset : offset + n], encoded.scales[index])
        out[name] = (np.asarray(ref, np.float64) + delta.reshape(ref.shape)).astype(ref.dtype)
        offset += n
        index += 1
    return out
