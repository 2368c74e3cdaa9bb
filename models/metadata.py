"""What a FedPM model expects and where it came from.

The metadata travels inside the ONNX file (``metadata_props["fedpm"]``, JSON), so a model file
alone tells an edge agent or the serving API how to feed it; the registry card repeats it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

METADATA_KEY = "fedpm"
METADATA_SCHEMA_VERSION = 1
INPUT_NAME = "windows"
OUTPUT_NAMES = ("probabilities", "embedding")
NORMAL_CLASS = "normal"


class Provenance(BaseModel):
    """Where a model came from."""

    model_config = ConfigDict(extra="allow", frozen=True)

    source: str = Field(description="'federated', 'centralised' or 'untrained'")
    run_id: str = ""
    server_round: int = Field(default=0, ge=0)
    sites: tuple[str, ...] = ()
    created_at: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    framework: dict[str, str] = Field(default_factory=dict)


class ModelMetadata(BaseModel):
    """The model's input contract and provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = METADATA_SCHEMA_VERSION
    architecture: str = "wdcnn"
    sample_rate_hz: float = Field(gt=0, le=1_000_000)
    window_samples: int = Field(ge=16)
    channels: int = Field(ge=1, le=16)
    units: str = "g"
    class_names: tuple[str, ...]
    input_name: str = INPUT_NAME
    output_names: tuple[str, ...] = OUTPUT_NAMES
    embedding_dim: int = Field(ge=1)
    preprocessing: str = "per-window, per-channel standardisation (in graph)"
    provenance: Provenance
    quantization: Literal["float32", "int8", "w4a8"] = Field(
        default="float32",
        description="numeric format: float32; int8 weights and activations; or w4a8, int4"
        " weights in the inner convolutions, int8 elsewhere, int8 activations",
    )
    quantization_details: dict[str, str] = Field(
        default_factory=dict,
        description="how a quantised model was made (``models.quantize``): format, calibration,"
        " sha256 of the float32 model it came from",
    )

    @field_validator("class_names")
    @classmethod
    def _classes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) < 2 or len(set(value)) != len(value):
            raise ValueError("class_names must hold at least two distinct names")
        return value

    @model_validator(mode="after")
    def _normal_first(self) -> ModelMetadata:
        if NORMAL_CLASS in self.class_names and self.class_names[0] != NORMAL_CLASS:
            raise ValueError(f"'{NORMAL_CLASS}' must be the first class when present")
        return self

    @property
    def window_seconds(self) -> float:
        """Window length in seconds."""
        return self.window_samples / self.sample_rate_hz

    def to_json(self) -> str:
        """Serialise as compact JSON."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelMetadata:
        """Parse and validate JSON metadata (raises ``pydantic.ValidationError``)."""
        return cls.model_validate_json(text)

    def with_provenance(self, **changes: Any) -> ModelMetadata:
        """Return a copy whose provenance has ``changes`` applied."""
        prov = self.provenance.model_copy(update=changes)
        return self.model_copy(update={"provenance": prov})
