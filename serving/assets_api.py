"""Routes for a tenant's assets: register or update one, read one, list them.

Operation ids (stable for generated ERP clients): ``put_asset``, ``get_asset``, ``list_assets``.
An asset's id is the caller's own (an SAP equipment or functional location, a Maximo asset
number), unique per tenant; it may contain ``/``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, field_validator

from models.bearing import get_bearing
from models.errors import SignalError
from serving.adapters import EXTERNAL_ID_KEYS
from serving.auth import AUTH_ERRORS, KeyDep, check_site, require
from serving.routing import JsonBodyRoute
from serving.schemas import ErrorResponse
from serving.state import NAME_RE, ApiKey, Asset, Permission, StateStore

_NOT_FOUND: dict[int | str, dict[str, object]] = {
    **AUTH_ERRORS,
    status.HTTP_404_NOT_FOUND: {"model": ErrorResponse, "description": "No such asset"},
}

router = APIRouter(tags=["assets"], route_class=JsonBodyRoute)


class AssetIn(BaseModel):
    """What FedPM needs to know about an asset."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "site": "plant-a",
                    "machine_group": 2,
                    "mounting": "rigid",
                    "bearing": "6205",
                    "nominal_rpm": 1797,
                    "description": "cooling water pump 17, drive-end bearing",
                }
            ]
        },
    )

    site: str = Field(pattern=NAME_RE.pattern, description="Site (plant) the asset is at.")
    machine_group: Literal[1, 2] = Field(
        default=2, description="ISO 10816-3 / 20816-3 group: 1 large, 2 medium machines."
    )
    mounting: Literal["rigid", "flexible"] = Field(
        default="rigid", description="Foundation, for the ISO zone boundaries."
    )
    bearing: str | None = Field(
        default=None,
        max_length=200,
        description="Bearing at the sensor: a catalogue name (6205, 6203, ...) or a geometry "
        "'n=9,d=7.94,D=39.04,angle=0' (d and D in one length unit, angle in degrees).",
    )
    nominal_rpm: Annotated[float, Strict(), AllowInfNan(False)] | None = Field(
        default=None, gt=0, le=200_000, description="Nominal shaft speed, rev/min."
    )
    description: str = Field(default="", max_length=500)
    external_ids: dict[str, str] = Field(
        default_factory=dict,
        max_length=len(EXTERNAL_ID_KEYS),
        description="The asset's keys in other systems, for webhook payloads and labels: "
        "sap_equipment or sap_functional_location, sap_plant, maximo_assetnum, maximo_siteid, "
        "maximo_location, edge_asset_id (docs/erp-integration.md).",
    )

    @field_validator("external_ids")
    @classmethod
    def _known_external_ids(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - EXTERNAL_ID_KEYS)
        if unknown:
            raise ValueError(
                f"unknown keys {unknown}; known: {', '.join(sorted(EXTERNAL_ID_KEYS))}"
            )
        for key, text in value.items():
            if not 1 <= len(text) <= 100 or not text.isprintable():
                raise ValueError(f"{key} must be 1-100 printable characters")
        return value

    @field_validator("bearing")
    @classmethod
    def _known_bearing(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                get_bearing(value)
            except SignalError as exc:
                raise ValueError(str(exc)) from exc
        return value


class AssetOut(AssetIn):
    """An asset as stored."""

    model_config = ConfigDict(extra="forbid")

    asset_id: str
    created_at: float = Field(description="Unix time of registration, s.")
    updated_at: float = Field(description="Unix time of the last update, s.")

    @classmethod
    def from_asset(cls, asset: Asset) -> AssetOut:
        """Public view of a stored asset."""
        return cls(
            asset_id=asset.asset_id,
            site=asset.site,
            machine_group=2 if asset.machine_group == 2 else 1,
            mounting="flexible" if asset.mounting == "flexible" else "rigid",
            bearing=asset.bearing,
            nominal_rpm=asset.nominal_rpm,
            description=asset.description,
            external_ids=dict(asset.attributes),
            created_at=asset.created_at,
            updated_at=asset.updated_at,
        )


class AssetList(BaseModel):
    """The assets a key can see."""

    assets: list[AssetOut]


async def state_store(request: Request) -> StateStore:
    """The application's state store."""
    store: StateStore = request.app.state.state_store
    return store


StoreDep = Annotated[StateStore, Depends(state_store)]


def _check_asset_id(asset_id: str) -> None:
    if not NAME_RE.fullmatch(asset_id):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"asset id {asset_id!r} is not valid: 1-128 characters, letters, digits and"
            " . _ : / - (starting with a letter or digit)",
        )


def visible_asset(store: StateStore, key: ApiKey, asset_id: str) -> Asset:
    """The tenant's asset ``asset_id`` if this key may see it: ``404`` unknown, ``403`` site."""
    asset = store.get_asset(key.tenant, asset_id)
    if asset is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no asset '{asset_id}' in this tenant")
    check_site(key, asset.site)
    return asset


@router.put(
    "/v1/assets/{asset_id:anypath}",
    summary="Register or update an asset",
    responses={
        **AUTH_ERRORS,
        status.HTTP_201_CREATED: {"model": AssetOut, "description": "Registered"},
        status.HTTP_422_UNPROCESSABLE_CONTENT: {"model": ErrorResponse, "description": "Bad"},
    },
)
def put_asset(
    asset_id: str,
    body: AssetIn,
    response: Response,
    store: StoreDep,
    key: Annotated[ApiKey, Depends(require(Permission.MANAGE_ASSETS))],
) -> AssetOut:
    """Register the asset (``201``) or replace its description (``200``).

    The key must hold ``manage_assets`` and be scoped to the asset's site, the old one too when
    an update moves it.
    """
    _check_asset_id(asset_id)
    check_site(key, body.site)
    old = store.get_asset(key.tenant, asset_id)
    if old is not None:
        check_site(key, old.site)
    stored = store.put_asset(
        Asset(
            tenant=key.tenant,
            asset_id=asset_id,
            site=body.site,
            machine_group=body.machine_group,
            mounting=body.mounting,
            bearing=body.bearing,
            nominal_rpm=body.nominal_rpm,
            description=body.description,
            attributes=dict(body.external_ids),
        )
    )
    if old is None:
        response.status_code = status.HTTP_201_CREATED
    return AssetOut.from_asset(stored)


@router.get("/v1/assets/{asset_id:anypath}", summary="One asset", responses=_NOT_FOUND)
def get_asset(asset_id: str, store: StoreDep, key: KeyDep) -> AssetOut:
    """Return an asset of the key's tenant, on a site the key is scoped to."""
    return AssetOut.from_asset(visible_asset(store, key, asset_id))


@router.get("/v1/assets", summary="The assets this key can see", responses=AUTH_ERRORS)
def list_assets(store: StoreDep, key: KeyDep) -> AssetList:
    """List the tenant's assets on the sites the key is scoped to, by asset id."""
    return AssetList(
        assets=[AssetOut.from_asset(a) for a in store.list_assets(key.tenant, key.sites)]
    )
