"""A bare aiohttp server with ttcp's routes and no work behind them: the ceiling
that aiohttp itself allows on this machine, measured with the same client.

    python bench/api_baseline.py HOST PORT [LIST.json]    (prints "listening" when ready)

GET / answers the JSON list in LIST.json (the filter texts ttcp lists in the same
run, so both send the same bytes), rendered once; by default the benchmark's 9
addresses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aiohttp import web

ADDRESSES = [f"127.0.7.{i}" for i in range(1, 10)]  # what ttcp's GET lists in the benchmark
BODY = json.dumps(ADDRESSES).encode()


async def _list(_request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


async def _change(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=204)


def main() -> None:
    global BODY
    host, port = sys.argv[1], int(sys.argv[2])
    if len(sys.argv) > 3:
        BODY = json.dumps(json.loads(Path(sys.argv[3]).read_text()), separators=(", ", ": ")).encode()
    app = web.Application()
    app.router.add_get("/", _list, allow_head=False)
    app.router.add_put("/", _change)
    app.router.add_delete("/", _change)
    web.run_app(app, host=host, port=port, access_log=None, print=lambda _msg: print("listening", flush=True))


if __name__ == "__main__":
    main()
