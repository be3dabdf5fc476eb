"""Kernel facts and probes: UAPI numbers and layouts, what this kernel can do, its
BTF, RLIMIT_MEMLOCK, and attaching programs (`python -m ttcp.kernel`)."""
