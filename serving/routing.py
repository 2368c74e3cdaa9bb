"""A FastAPI route class whose every unparseable JSON body becomes a ``422``, with a reason.

FastAPI answers a body that :func:`json.loads` rejects with a ``JSONDecodeError`` as ``422``,
but anything else it raises (nesting deeper than the recursion limit, an integer longer than
Python's 4300-digit limit, bytes that are not UTF-8) becomes a bare ``400 There was an error
parsing the body``. :class:`JsonBodyRoute` re-raises those as ``JSONDecodeError`` with a
message a caller can act on (FastAPI's documented custom ``Request``/``APIRoute`` hook).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.convertors import Convertor, register_url_convertor


class AnyPathConvertor(Convertor[str]):
    """Starlette's ``path`` convertor, newlines included: ``{asset_id:anypath}``.

    ``path`` matches ``.*``, which stops at a newline, so a path carrying an encoded newline
    (``%0A``) matched no route and was answered with a bare ``404 Not Found`` (found by the
    schemathesis test). Matched, the route's own validation answers ``422`` and says which
    characters an id may hold.
    """

    regex = "[\\s\\S]*"

    def convert(self, value: str) -> str:
        """The path segment as given."""
        return value

    def to_string(self, value: str) -> str:
        """The path segment as given."""
        return value


register_url_convertor("anypath", AnyPathConvertor())


def parse_json(body: bytes) -> Any:
    """Parse a JSON request body, raising only :class:`json.JSONDecodeError` on bad input.

    Valid JSON is parsed with orjson: a 2,048-sample window as a JSON list takes about 1.2 ms
    with :func:`json.loads` and a tenth of that with orjson, most of a request's time on a
    one-window prediction (bench/bench_serving.py). orjson refuses what strict JSON refuses
    (``NaN``, ``Infinity``, integers beyond 64 bits, invalid UTF-8); such a body is parsed
    again with :func:`json.loads`, which accepts ``NaN`` and ``Infinity`` so that the schemas
    can name the sample that holds one, and otherwise gives the error a person reads.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # the slow path below explains it, or accepts NaN/Infinity for the schemas
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        raise
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError("the body is not UTF-8 text", "", -1) from exc
    except RecursionError as exc:
        raise json.JSONDecodeError("arrays or objects are nested too deeply", "", -1) from exc
    except ValueError as exc:  # an integer literal beyond int_max_str_digits
        limit = sys.get_int_max_str_digits()
        raise json.JSONDecodeError(f"a number has more than {limit} digits", "", -1) from exc


class _JsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class JsonBodyRoute(APIRoute):
    """An :class:`~fastapi.routing.APIRoute` that parses JSON bodies with :func:`parse_json`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler so that it sees a request using :func:`parse_json`."""
        handler = super().get_route_handler()

        async def json_body_handler(request: Request) -> Response:
            return await handler(_JsonRequest(request.scope, request.receive))

        return json_body_handler
