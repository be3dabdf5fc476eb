"""Everything ttcp raises on purpose derives from TtcpError (ttcp.errors), so one
`except TtcpError` at the command's edge turns any of them into one line."""

from __future__ import annotations

import importlib
import inspect

from tests.support.paths import ttcp_modules
from ttcp.errors import TtcpError


def test_every_error_class_of_ttcp_is_a_ttcp_error() -> None:
    found = {}
    for name in ttcp_modules():
        if name.endswith("__main__"):
            continue  # entry points: their modules are imported here anyway
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == name:
                found[f"{name}.{cls_name}"] = cls
    assert len(found) >= 20  # the walk found them
    strays = sorted(n for n, cls in found.items() if not issubclass(cls, TtcpError))
    assert not strays, f"derive these from ttcp.errors.TtcpError: {strays}"
