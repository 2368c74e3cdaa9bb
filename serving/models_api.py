"""Routes for the model registry's versions: list them with their cards, read one.

``GET /v1/models`` (``list_models``) lists the registry's versions newest first, a page at a
time (``limit``, ``offset``), each with its public card and whether it is the one served.
``GET /v1/models/{version}`` (``get_model``) gives one version (``v3`` or ``3``); an unknown
version is a ``404`` that says which versions exist. ``GET /v1/models/current`` stays in
:mod:`serving.app`. Any valid API key may read them.

Only public card fields are shown (:class:`serving.schemas.ModelPublic`): no file paths, no
signature. Listing reads the cards of one page only (a directory listing plus one small JSON
file per version shown); it does not hash the model files, so ``served`` is the only sign that
a version passed verification, and a version whose card cannot be read is listed as
``readable: false`` without card fields rather than left out, so pages never shift.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from models.errors import RegistryError
from models.registry import FileRegistry
from serving.auth import AUTH_ERRORS, KeyDep
from serving.predictor import Predictor
from serving.routing import JsonBodyRoute
from serving.schemas import ErrorResponse, ModelPublic

MAX_PAGE = 200
"""Most versions one page may hold."""

_VERSION_RE = re.compile(r"^v?([0-9]{1,9})$")

router = APIRouter(tags=["models"], route_class=JsonBodyRoute)


class ModelVersion(BaseModel):
    """One registry version: its public card, and whether it answers predictions now."""

    version: str = Field(description="Registry version, e.g. 'v3'.")
    served: bool = Field(description="This version answers predictions now.")
    readable: bool = Field(description="Its card could be read; false leaves `card` null.")
    card: ModelPublic | None = Field(description="The public card; null when unreadable.")


class ModelList(BaseModel):
    """A page of the registry's versions, newest first."""

    models: list[ModelVersion]
    served_version: str | None = Field(description="Version now served; null when none is.")
    total: int = Field(description="Versions in the registry.")
    offset: int
    limit: int
    next_offset: int | None = Field(description="`offset` of the next page; null on the last.")


async def get_registry(request: Request) -> FileRegistry:
    """The registry the application serves from (a handle; reading it is cheap)."""
    return FileRegistry(request.app.state.settings.registry_dir)


async def _predictor(request: Request) -> Predictor:
    predictor: Predictor = request.app.state.predictor
    return predictor


RegistryDep = Annotated[FileRegistry, Depends(get_registry)]
PredictorDep = Annotated[Predictor, Depends(_predictor)]


def _entry(
    registry: FileRegistry, number: int, served_sha: str | None, served: int | None
) -> ModelVersion:
    label = f"v{number}"
    try:
        card = registry.card(number)
    except RegistryError:
        return ModelVersion(version=label, served=False, readable=False, card=None)
    is_served = served == number and served_sha == card.sha256
    return ModelVersion(
        version=label, served=is_served, readable=True, card=ModelPublic.from_card(card)
    )


def _served(predictor: Predictor) -> tuple[int | None, str | None]:
    model = predictor.model
    return (None, None) if model is None else (model.card.version, model.card.sha256)


@router.get("/v1/models", summary="The registry's model versions", responses=AUTH_ERRORS)
def list_models(
    registry: RegistryDep,
    predictor: PredictorDep,
    key: KeyDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Versions per page.")] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="Versions to skip.")] = 0,
) -> ModelList:
    """List the registry's versions newest first, with their public cards, a page at a time.

    ``served`` marks the version answering predictions. Follow ``next_offset`` for the next
    page; a version published meanwhile shifts later pages by one (they are newest first).
    """
    numbers = sorted(registry.versions(), reverse=True)
    served, served_sha = _served(predictor)
    page = numbers[offset : offset + limit]
    following = offset + limit
    return ModelList(
        models=[_entry(registry, n, served_sha, served) for n in page],
        served_version=None if served is None else f"v{served}",
        total=len(numbers),
        offset=offset,
        limit=limit,
        next_offset=following if following < len(numbers) else None,
    )


@router.get(
    "/v1/models/{version}",
    summary="One model version",
    responses={
        **AUTH_ERRORS,
        status.HTTP_404_NOT_FOUND: {"model": ErrorResponse, "description": "No such version"},
    },
)
def get_model(
    version: str, registry: RegistryDep, predictor: PredictorDep, key: KeyDep
) -> ModelVersion:
    """One registry version (``v3`` or ``3``) with its public card and whether it is served."""
    match = _VERSION_RE.fullmatch(version)
    numbers = registry.versions()
    known = f"v{numbers[0]}..v{numbers[-1]}" if numbers else "none yet"
    if match is None or int(match.group(1)) not in numbers:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"no model version {version!r} in the registry (versions: {known});"
            " GET /v1/models lists them",
        )
    served, served_sha = _served(predictor)
    return _entry(registry, int(match.group(1)), served_sha, served)
