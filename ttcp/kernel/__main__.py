"""What this kernel can do, and what it makes of any BPF object.

    python -m ttcp.kernel features            # every feature probe's answer
    python -m ttcp.kernel explain OBJ         # every CO-RE decision as a JSON line
    python -m ttcp.kernel load OBJ            # load every program of OBJ, attach none

`explain` and `load` take --btf PATH, the target BTF (default: the running
kernel's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ttcp import syscalls
from ttcp.elf_loader import Collection
from ttcp.errors import TtcpError
from ttcp.kernel import btf as kernel_btf
from ttcp.kernel import features
from ttcp.kernel.features import Probe
from ttcp.kernel.uapi import AttachType, MapType
from ttcp.obj.btf import KIND_FUNC, KIND_TYPEDEF, Btf
from ttcp.obj.spec import CollectionSpec

# Probes that need a kernel BTF id to load against: ttcp's own targets.
_TARGETS = (("fentry", "tcp_close", KIND_FUNC), ("tp_btf", "btf_trace_tcp_destroy_sock", KIND_TYPEDEF))


def probes(btf_ids: dict[str, int]) -> list[Probe]:
    """Every probe that needs no BTF, plus those whose target ids are given
    (`fentry` -> a FUNC id of tcp_close, `tp_btf` -> btf_trace_tcp_destroy_sock)."""
    found = [features.memcg_accounting(), features.sysfs_btf_mmap(kernel_btf.VMLINUX_BTF),
             features.batch_map_ops(), features.batch_map_ops(MapType.ARRAY),
             features.batch_map_ops(MapType.PERCPU_ARRAY), features.recursion_misses(), features.perf_event_link()]
    if "tp_btf" in btf_ids:
        found.append(features.tracing_link_create(AttachType.TRACE_RAW_TP, btf_ids["tp_btf"]))
    if "fentry" in btf_ids:
        found.append(features.fentry(btf_ids["fentry"], "tcp_close"))
    return found


def _features(args: argparse.Namespace) -> int:
    ids: dict[str, int] = {}
    try:  # the report needs the kernel's BTF for two probes; the others do not
        btf = kernel_btf.read_vmlinux_btf()
        for key, name, kind in _TARGETS:
            found = btf.ids_by_name(name, kind)
            if found:
                ids[key] = found[0]
    except TtcpError as e:  # a report: say it and go on
        print(f"kernel BTF: {e}", file=sys.stderr)
    for p in probes(ids):
        print(p.reason)
    return 0


def _target(args: argparse.Namespace) -> Btf:
    return kernel_btf.read_vmlinux_btf(Path(args.btf))


def _explain(args: argparse.Namespace) -> int:
    for decision in CollectionSpec(args.object).explain(_target(args)):
        print(decision.to_json())
    return 0


def _load(args: argparse.Namespace) -> int:
    failures = 0
    with Collection(args.object, target_btf=_target(args)) as collection:
        for name in collection.spec.program_names():
            try:
                prog = collection.load_program(name, stats=args.stats)
                info = syscalls.prog_info(prog.fd)
                stats = prog.verifier_stats.splitlines()[-1:] if args.stats else []
                print(f"{name}: loaded as {prog.kind.style} (prog id {info.id})"
                      + "".join(f"; {line}" for line in stats))
            except TtcpError as e:
                failures += 1
                print(f"{name}: FAILED: {e}", file=sys.stderr)
    return 1 if failures else 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ttcp.kernel",
                                description="What this kernel can do, and what it makes of any BPF object.")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("features", help="print every feature probe's answer").set_defaults(run=_features)
    for name, run, text in (
            ("explain", _explain, "print every CO-RE relocation decision as a JSON line; load nothing"),
            ("load", _load, "create the maps and load every program (nothing is attached); exit 0 only if all load")):
        cmd = commands.add_parser(name, help=text, description=text)
        cmd.add_argument("object", help="BPF ELF object (clang -g -target bpf)")
        cmd.add_argument("--btf", default=str(kernel_btf.VMLINUX_BTF),
                         help="target BTF to relocate against (default: %(default)s)")
        if name == "load":
            cmd.add_argument("--stats", action="store_true",
                             help="print the verifier's statistics of each program (processed insns)")
        cmd.set_defaults(run=run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except TtcpError as e:
        print(f"{getattr(args, 'object', 'ttcp.kernel')}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
