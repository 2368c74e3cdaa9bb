"""CMMS failure codes and the FedPM classes they label windows with.

A work order closed with a failure code says what was wrong with the asset over its span; the
edge agent (``fedpm edge-labels import``) and the serving API (a closed maintenance request,
docs/erp-integration.md) turn it into a label of the class the code stands for. It lives in
``models`` because both roles use it and neither may import the other.
:data:`DEFAULT_FAILURE_CODES` is a small documented default (codes are matched
case-insensitively, after trimming); a site adds or overrides codes with its own mapping
(``fedpm edge-labels import --map CODE=CLASS``).

=================================================  ==============
code                                               FedPM class
=================================================  ==============
``BRG-IR``, ``BRG-INNER``                          ``inner_race``
``BRG-OR``, ``BRG-OUTER``                          ``outer_race``
``BRG-BALL``, ``BRG-RE`` (rolling element)         ``ball``
``BRG-CAGE``                                       ``cage``
``OK``, ``NFF`` (no fault found), ``NONE``         ``normal``
=================================================  ==============

Examples
--------
>>> resolve_failure_code(" brg-or ")
'outer_race'
>>> resolve_failure_code("PUMP-SEAL", {"pump-seal": "seal_leak"})
'seal_leak'
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

DEFAULT_FAILURE_CODES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "BRG-IR": "inner_race",
        "BRG-INNER": "inner_race",
        "BRG-OR": "outer_race",
        "BRG-OUTER": "outer_race",
        "BRG-BALL": "ball",
        "BRG-RE": "ball",
        "BRG-CAGE": "cage",
        "OK": "normal",
        "NFF": "normal",
        "NONE": "normal",
    }
)
"""Failure code (upper case) -> FedPM class."""


def normalise_code(code: str) -> str:
    """The form codes are compared in: trimmed, upper case."""
    return code.strip().upper()


def resolve_failure_code(code: str, extra: Mapping[str, str] | None = None) -> str:
    """Return the FedPM class of a CMMS failure code.

    Parameters
    ----------
    code
        The work order's failure code (case-insensitive).
    extra
        Site codes (any case) -> class; they override the defaults.

    Raises
    ------
    KeyError
        The code is in neither mapping (the message names the known codes).
    """
    key = normalise_code(code)
    table = dict(DEFAULT_FAILURE_CODES)
    table.update({normalise_code(k): v for k, v in (extra or {}).items()})
    if key not in table:
        raise KeyError(f"unknown failure code {code!r}: known codes are {', '.join(sorted(table))}")
    return table[key]
