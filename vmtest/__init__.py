"""make vmtest: ttcp's kernel tests inside the distribution kernels users run.

kernels.py fetches and unpacks Debian kernel packages (nothing is installed
on the host), boot.py starts one under qemu with virtme-ng and the host's
root file system, guest.py is what runs inside, report.py turns the
guests' JUnit files into the kernel x attach-mode table (pure), and
__main__.py ties them together: `python -m vmtest --help`.
"""
