"""Export a :class:`~models.network.WDCNN` to ONNX with FedPM metadata embedded."""

from __future__ import annotations

import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path

import onnx
import torch

from models.errors import ModelFormatError
from models.metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAMES, ModelMetadata, Provenance
from models.network import WDCNN, InferenceWrapper

OPSET = 17


def metadata_for(
    net: WDCNN,
    *,
    sample_rate_hz: float,
    class_names: tuple[str, ...],
    provenance: Provenance,
) -> ModelMetadata:
    """Build the metadata describing ``net``'s input contract."""
    cfg = net.config
    if len(class_names) != cfg.n_classes:
        raise ModelFormatError(
            f"{len(class_names)} class names for a {cfg.n_classes}-class network"
        )
    if not provenance.created_at:
        provenance = provenance.model_copy(
            update={"created_at": datetime.now(UTC).isoformat(timespec="seconds")}
        )
    framework = {"torch": torch.__version__, "onnx": onnx.__version__, **provenance.framework}
    return ModelMetadata(
        sample_rate_hz=sample_rate_hz,
        window_samples=cfg.window_samples,
        channels=cfg.in_channels,
        class_names=class_names,
        embedding_dim=cfg.embedding_dim,
        provenance=provenance.model_copy(update={"framework": framework}),
    )


def export_onnx(net: WDCNN, metadata: ModelMetadata) -> bytes:
    """Serialise ``net`` (in eval mode) to ONNX bytes with a dynamic batch dimension.

    The graph takes ``windows`` (batch, channels, samples) float32 in the metadata's units and
    returns ``probabilities`` (batch, classes) and ``embedding`` (batch, embedding_dim).
    """
    cfg = net.config
    if (cfg.in_channels, cfg.window_samples) != (metadata.channels, metadata.window_samples):
        raise ModelFormatError("metadata does not match the network's input shape")
    was_training = net.training
    net.eval()
    wrapper = InferenceWrapper(net).eval()
    example = torch.zeros(1, cfg.in_channels, cfg.window_samples)
    tmp = tempfile.TemporaryDirectory(prefix="fedpm-export-")
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated but needs no onnxscript; see docs.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                wrapper,
                (example,),
                str(Path(tmp.name) / "model.onnx"),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}},
                opset_version=OPSET,
            )
        proto = onnx.load(str(Path(tmp.name) / "model.onnx"))
    finally:
        net.train(was_training)
        tmp.cleanup()
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = metadata.to_json()
    proto.producer_name = "fedpm"
    proto.doc_string = (
        f"FedPM {metadata.architecture}: {metadata.channels}x{metadata.window_samples} windows "
        f"at {metadata.sample_rate_hz:g} Hz -> {', '.join(metadata.class_names)}"
    )
    onnx.checker.check_model(proto)
    data: bytes = proto.SerializeToString()
    return data
