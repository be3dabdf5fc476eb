# ttcp — see README.md. Everything here runs as root on Debian 12 or newer.
PYTHON  ?= python3
VENV    ?= .venv
VPY      = $(VENV)/bin/python
CLANG   ?= clang
STRIP   ?= llvm-strip
PORT    ?= 8090
IMAGE   ?= ttcp
BPF_SRC  = bpf/tcprtt.bpf.c
BPF_OBJ  = ttcp/data/tcprtt.bpf.o
# Reproducible: no absolute paths, no compiler ident; DWARF stripped, BTF kept.
BPF_CFLAGS = -O2 -g -target bpf -mcpu=v3 -Wall -Werror \
	-fdebug-prefix-map=$(CURDIR)=. -fno-ident
APT_RUN    = python3-venv
APT_BUILD  = clang llvm libbpf-dev
APT_TEST   = bpftool iproute2 libcap2-bin curl prometheus
APT_VM     = qemu-system-x86 kmod debian-archive-keyring busybox-static
KERNELS   ?= 5.10.0-32 5.10 6.1 6.12

.PHONY: all bpf deps deps-run deps-vm venv run test test-container vmtest lint fuzz bench build clean mounts

all: bpf

bpf: $(BPF_OBJ)

$(BPF_OBJ): $(BPF_SRC)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@
	$(STRIP) -g $@

# Debian packages (only the missing ones are installed). deps-run: what
# running ttcp from a checkout needs; deps: also the build and test tools
# (prometheus: the tests start their own server and run promtool; on a machine
# with systemd, Debian's package also enables its own service on :9090).
define apt_install
	@missing=$$(for p in $(1); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

deps-run:
	$(call apt_install,$(APT_RUN))

deps:
	$(call apt_install,$(APT_RUN) $(APT_BUILD) $(APT_TEST))

deps-vm:
	$(call apt_install,$(APT_VM))

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

mounts:
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	@mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing

run: deps-run venv mounts
	$(VENV)/bin/ttcp --port $(PORT) $(ARGS)

test: deps venv mounts
	$(VPY) -m pytest -q $(PYTEST_ARGS)

# The kernel matrix: Debian's own kernels (fetched and cached, nothing installed)
# booted under qemu, the `matrix` tests inside each (FULL=1: the whole suite).
vmtest: deps deps-vm venv
	KERNELS="$(KERNELS)" FULL="$(FULL)" $(VPY) -m vmtest $(VMTEST_ARGS)

# README's Docker commands against a private dockerd with real containers, and pods
# made with a private containerd (the tests install docker.io, which brings containerd
# and ctr, debootstrap, nftables and curl with apt if missing, and remove everything
# they create).
test-container: deps-run venv mounts
	$(VPY) -m pytest -m container -v -s tests/system/test_container.py tests/system/test_container_names.py \
		tests/system/test_containerd.py tests/system/test_container_groups.py $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy --strict ttcp vmtest

fuzz: venv
	TTCP_FUZZ_EXAMPLES=$${TTCP_FUZZ_EXAMPLES:-20000} $(VPY) -m pytest -q -m fuzz tests/

# Benchmarks against bcc, libbpf-tools and bpftrace (installs them); rewrites BENCHMARKS.md.
bench: deps venv mounts
	$(VPY) bench/run.py $(BENCH_ARGS)

build:
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
