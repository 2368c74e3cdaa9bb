"""The demo's embedded defaults: three factory sites whose data are not identically distributed.

Each site runs its machines at its own speed, has its own structural resonance, and has seen only
some fault types, so no single site could train a model that knows every fault: the point of
federating them.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.simulator import FaultMode, MachineProfile


@dataclass(frozen=True)
class AssetSpec:
    """One monitored machine (one accelerometer) and its bearing condition."""

    asset_id: str
    mode: FaultMode
    severity: float


@dataclass(frozen=True)
class SiteSpec:
    """One factory site: machine speed and resonance, its assets, a seed."""

    site_id: str
    rpm: float
    resonance_hz: float
    assets: tuple[AssetSpec, ...]
    seed: int

    def profile(self) -> MachineProfile:
        """Machine profile shared by this site's assets."""
        return MachineProfile(rpm=self.rpm, resonance_hz=self.resonance_hz)


DEMO_SITES: tuple[SiteSpec, ...] = (
    SiteSpec(
        "site-a",
        rpm=1797.0,
        resonance_hz=3000.0,
        seed=11,
        assets=(
            AssetSpec("pump-1", "normal", 0.0),
            AssetSpec("pump-2", "inner_race", 0.6),
            AssetSpec("fan-1", "ball", 0.7),
        ),
    ),
    SiteSpec(
        "site-b",
        rpm=1772.0,
        resonance_hz=3400.0,
        seed=22,
        assets=(
            AssetSpec("press-1", "normal", 0.0),
            AssetSpec("press-2", "outer_race", 0.5),
            AssetSpec("motor-7", "inner_race", 0.4),
        ),
    ),
    SiteSpec(
        "site-c",
        rpm=1750.0,
        resonance_hz=2600.0,
        seed=33,
        assets=(
            AssetSpec("conveyor-1", "normal", 0.0),
            AssetSpec("conveyor-2", "ball", 0.5),
            AssetSpec("mill-3", "outer_race", 0.7),
        ),
    ),
)

# An unseen machine for the held-out check: other speed, other resonance, other seed.
HELD_OUT_PROFILE = MachineProfile(rpm=1730.0, resonance_hz=3200.0)
HELD_OUT_SEED = 4242


def site_by_id(site_id: str) -> SiteSpec:
    """The embedded site called ``site_id``."""
    for site in DEMO_SITES:
        if site.site_id == site_id:
            return site
    known = ", ".join(s.site_id for s in DEMO_SITES)
    raise KeyError(f"unknown demo site {site_id!r} (known: {known})")
