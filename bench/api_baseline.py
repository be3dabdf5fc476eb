"""A bare aiohttp server with ttcp's routes and no work behind them: the ceiling
that aiohttp itself allows on this machine, measured with the same client.

    python bench/api_baseline.py HOST PORT    (prints "listening" when ready)
"""

from __future__ import annotations

import sys

from aiohttp import web

ADDRESSES = [f"127.0.7.{i}" for i in range(1, 10)]  # what ttcp's GET lists in the benchmark


async def _list(_request: web.Request) -> web.Response:
    return web.json_response(ADDRESSES)


async def _change(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=204)


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    app = web.Application()
    app.router.add_get("/", _list, allow_head=False)
    app.router.add_put("/", _change)
    app.router.add_delete("/", _change)
    web.run_app(app, host=host, port=port, access_log=None, print=lambda _msg: print("listening", flush=True))


if __name__ == "__main__":
    main()
