"""Rolling-element bearing kinematics: geometry, defect frequencies and a small catalogue.

The defect frequencies follow the standard rigid-body kinematic formulas for a bearing with a
stationary outer ring and a rotating inner ring (Randall & Antoni, "Rolling element bearing
diagnostics - A tutorial", MSSP 25(2), 2011, eq. 1-4). Real bearings slip, so measured
frequencies sit 1-2 % off these values.

Examples
--------
>>> from models.bearing import defect_frequencies, get_bearing
>>> f = defect_frequencies(get_bearing("6205"), rpm=1800.0)
>>> round(f.bpfo_hz / f.shaft_hz, 4), round(f.bpfi_hz / f.shaft_hz, 4)
(3.5848, 5.4152)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType

from models.errors import SignalError

__all__ = [
    "BEARINGS",
    "BearingGeometry",
    "DefectFrequencies",
    "defect_frequencies",
    "get_bearing",
]


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _require_positive_finite(name: str, value: float) -> None:
    if not (_is_real(value) and math.isfinite(value) and value > 0):
        raise SignalError(f"{name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True)
class BearingGeometry:
    """Internal geometry of a rolling-element bearing.

    Parameters
    ----------
    n_balls : int
        Number of rolling elements (per row), at least 3.
    ball_diameter : float
        Rolling-element diameter ``d``, in any length unit shared with `pitch_diameter`.
    pitch_diameter : float
        Pitch (cage) diameter ``D``, in the same unit as `ball_diameter`; ``d < D``.
    contact_angle_deg : float, optional
        Contact angle in degrees, ``0 <= angle < 90`` (0 for deep-groove ball bearings).
    name : str, optional
        Label for reports, ``"custom"`` by default.

    Raises
    ------
    SignalError
        If any field is out of range.
    """

    n_balls: int
    ball_diameter: float
    pitch_diameter: float
    contact_angle_deg: float = 0.0
    name: str = "custom"

    def __post_init__(self) -> None:
        if isinstance(self.n_balls, bool) or not isinstance(self.n_balls, numbers.Integral):
            raise SignalError(f"n_balls must be an int, got {self.n_balls!r}")
        if self.n_balls < 3:
            raise SignalError(f"n_balls must be at least 3, got {self.n_balls}")
        _require_positive_finite("ball_diameter", self.ball_diameter)
        _require_positive_finite("pitch_diameter", self.pitch_diameter)
        if self.ball_diameter >= self.pitch_diameter:
            raise SignalError(
                f"ball_diameter ({self.ball_diameter}) must be smaller than "
                f"pitch_diameter ({self.pitch_diameter})"
            )
        angle = self.contact_angle_deg
        if not (_is_real(angle) and math.isfinite(angle) and 0 <= angle < 90):
            raise SignalError(f"contact_angle_deg must be in [0, 90), got {angle!r}")
        # Normalise numpy scalars to builtins so instances compare, hash and print cleanly.
        object.__setattr__(self, "n_balls", int(self.n_balls))
        for field in ("ball_diameter", "pitch_diameter", "contact_angle_deg"):
            object.__setattr__(self, field, float(getattr(self, field)))

    @property
    def ratio(self) -> float:
        """Return ``d / D * cos(alpha)``, the dimensionless ratio in every defect formula."""
        cos_alpha = math.cos(math.radians(self.contact_angle_deg))
        return self.ball_diameter / self.pitch_diameter * cos_alpha


@dataclass(frozen=True)
class DefectFrequencies:
    """Kinematic defect frequencies of a bearing at one shaft speed, all in Hz.

    Attributes
    ----------
    shaft_hz : float
        Shaft rotation frequency ``fr``.
    bpfo_hz : float
        Ball-pass frequency, outer race.
    bpfi_hz : float
        Ball-pass frequency, inner race.
    bsf_hz : float
        Ball (rolling-element) spin frequency.
    ball_hz : float
        Ball-defect frequency, ``2 * bsf_hz`` (the defect strikes both races per spin).
    ftf_hz : float
        Fundamental train (cage) frequency.
    """

    shaft_hz: float
    bpfo_hz: float
    bpfi_hz: float
    bsf_hz: float
    ball_hz: float
    ftf_hz: float

    def as_dict(self) -> dict[str, float]:
        """Return the frequencies as a plain ``{field name: Hz}`` dictionary."""
        return asdict(self)


def defect_frequencies(geometry: BearingGeometry, rpm: float) -> DefectFrequencies:
    """Compute the kinematic defect frequencies of a bearing.

    Parameters
    ----------
    geometry : BearingGeometry
        Bearing internal geometry.
    rpm : float
        Shaft speed in revolutions per minute, positive.

    Returns
    -------
    DefectFrequencies
        Frequencies in Hz: ``BPFO = n/2 fr (1 - r)``, ``BPFI = n/2 fr (1 + r)``,
        ``BSF = D/(2d) fr (1 - r**2)``, ``FTF = fr/2 (1 - r)`` with ``r = d/D cos(alpha)``.

    Raises
    ------
    SignalError
        If `rpm` is not a positive finite number.

    Examples
    --------
    >>> f = defect_frequencies(BEARINGS["6205"], rpm=60.0)  # 1 Hz shaft: multiples of speed
    >>> round(f.ball_hz, 3), round(f.ftf_hz, 3)
    (4.713, 0.398)
    """
    _require_positive_finite("rpm", rpm)
    fr = rpm / 60.0
    r = geometry.ratio
    half_n = geometry.n_balls / 2.0
    bsf = geometry.pitch_diameter / (2.0 * geometry.ball_diameter) * fr * (1.0 - r * r)
    return DefectFrequencies(
        shaft_hz=fr,
        bpfo_hz=half_n * fr * (1.0 - r),
        bpfi_hz=half_n * fr * (1.0 + r),
        bsf_hz=bsf,
        ball_hz=2.0 * bsf,
        ftf_hz=fr / 2.0 * (1.0 - r),
    )


BEARINGS: Mapping[str, BearingGeometry] = MappingProxyType(
    {
        # CWRU drive end, SKF 6205-2RS JEM (inches), from the CWRU Bearing Data Center.
        "6205": BearingGeometry(9, 0.3126, 1.537, 0.0, "6205"),
        # CWRU fan end, SKF 6203-2RS JEM (inches), from the CWRU Bearing Data Center.
        "6203": BearingGeometry(8, 0.2656, 1.122, 0.0, "6203"),
        # XJTU-SY run-to-failure rig, LDK UER204 (mm), Wang et al., IEEE Trans. Rel. 2020.
        "UER204": BearingGeometry(8, 7.92, 34.55, 0.0, "UER204"),
        # IMS / NASA run-to-failure rig, Rexnord ZA-2115 double row (inches), Qiu et al. 2006.
        "ZA-2115": BearingGeometry(16, 0.331, 2.815, 15.17, "ZA-2115"),
    }
)
"""Catalogue of bearings with published internal geometry, keyed by designation."""

_CUSTOM_KEYS = {"n", "d", "D", "angle"}


def _parse_custom(spec: str) -> BearingGeometry:
    fields: dict[str, str] = {}
    for item in spec.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in _CUSTOM_KEYS or key in fields or not value:
            raise SignalError(
                f"bad bearing spec {spec!r}: expected 'n=<int>,d=<float>,D=<float>[,angle=<deg>]'"
            )
        fields[key] = value
    missing = {"n", "d", "D"} - fields.keys()
    if missing:
        raise SignalError(f"bad bearing spec {spec!r}: missing {', '.join(sorted(missing))}")
    try:
        n_balls = int(fields["n"])
        d, pitch = float(fields["d"]), float(fields["D"])
        angle = float(fields.get("angle", "0"))
    except ValueError as exc:
        raise SignalError(f"bad bearing spec {spec!r}: {exc}") from exc
    return BearingGeometry(n_balls, d, pitch, angle)


def get_bearing(spec: str) -> BearingGeometry:
    """Resolve a bearing from a catalogue name or a custom geometry string.

    Parameters
    ----------
    spec : str
        A key of `BEARINGS` (case-insensitive, e.g. ``"6205"``) or a custom geometry
        ``"n=9,d=0.3126,D=1.537,angle=0"`` (``angle`` in degrees, optional, default 0;
        ``d`` and ``D`` in any shared length unit; the keys are case-sensitive).

    Returns
    -------
    BearingGeometry
        The catalogue entry, or a geometry named ``"custom"``.

    Raises
    ------
    SignalError
        If `spec` is neither a catalogue name nor a valid custom geometry.

    Examples
    --------
    >>> get_bearing("n=9,d=0.3126,D=1.537").n_balls
    9
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SignalError(f"bearing spec must be a non-empty string, got {spec!r}")
    text = spec.strip()
    by_upper = {key.upper(): value for key, value in BEARINGS.items()}
    if text.upper() in by_upper:
        return by_upper[text.upper()]
    if "=" in text:
        return _parse_custom(text)
    known = ", ".join(sorted(BEARINGS))
    raise SignalError(f"unknown bearing {spec!r}: use one of {known} or 'n=..,d=..,D=..'")
