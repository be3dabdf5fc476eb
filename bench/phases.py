"""Loader phases of ttcp's start-up, through the Python API, in a fresh process.

Prints one JSON object of seconds: import (ttcp's loader modules, after the
interpreter is up), btf (read and index /sys/kernel/btf/vmlinux), object
(ELF, object BTF, .BTF.ext, map specs), maps (BTF_LOAD, MAP_CREATE), core
(link + CO-RE relocation of the tp_btf program), load (PROG_LOAD: the
verifier), attach (LINK_CREATE), fentry_refused (what `--attach auto` pays
first on a kernel that refuses fentry: its CO-RE and the refused PROG_LOAD).
"""

from __future__ import annotations

import json
import time

t_start = time.perf_counter()

from ttcp.elf_loader import Collection
from ttcp.errors import TtcpError
from ttcp.kernel.attach import attach
from ttcp.kernel.btf import read_vmlinux_btf
from ttcp.obj.spec import CollectionSpec
from ttcp.rtt.tracer import PROGRAM_OF_MODE, default_object


def main() -> None:
    out: dict[str, float | str] = {}
    t = time.perf_counter()
    out["import"] = t - t_start

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        out[name] = now - t
        t = now

    btf = read_vmlinux_btf()
    lap("btf")
    loader = Collection(CollectionSpec(str(default_object())), target_btf=btf)
    lap("object")
    try:
        loader.create_maps()
        lap("maps")
        name = PROGRAM_OF_MODE["tp_btf"]
        loader.prepare(name)
        lap("core")
        loader.prepare(name)  # load_program links and relocates again (resolver cache warm)
        lap("relink")
        prog = loader.load_program(name)
        lap("load")
        out["load"] = max(0.0, float(out["load"]) - float(out.pop("relink")))
        link = attach(prog.kind, prog.fd)
        lap("attach")
        link.close()
        t = time.perf_counter()
        try:
            loader.load_program(PROGRAM_OF_MODE["fentry"])
            out["fentry"] = "loaded"
        except TtcpError:
            pass
        lap("fentry_refused")
    finally:
        loader.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
