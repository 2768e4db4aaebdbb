# pyswarm: the two commands are `make demo` and `make test`; both set the machine up first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    := .venv
PY      := $(VENV)/bin/python
PYSWARM := $(VENV)/bin/pyswarm
# What a fresh Debian 12 machine lacks: the kernel tools the engine drives, a static busybox
# for the base image, and the peers the tests and benchmarks run (registry, runc).
APT_PACKAGES := python3 python3-venv nftables iproute2 util-linux busybox-static libseccomp2 \
                docker-registry runc curl procps etcd-server
# Only `make bench` needs these: bench/lb.py's load generator and its nginx peer, and
# Docker Swarm, the peer of bench/converge.py and bench/recovery.py (docker.io brings
# dockerd, the docker CLI, containerd and its runc shim; without it both report the peer
# skipped and give no ratio).
BENCH_PACKAGES := wrk nginx-light libnginx-mod-stream docker.io

.PHONY: help setup apt venv base-image demo test lint bench clean-test

help:
	@echo "make demo   set up this machine, start the daemon and run containers"
	@echo "make test   set up this machine and run the test suite (as root)"
	@echo "make lint   ruff and mypy"
	@echo "make bench  benchmarks against their peers (bench/)"

setup: apt venv base-image

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# busybox:latest in the default engine, built by `pyswarm image build` from
# examples/images/busybox; the daemon is started for it and stopped again if it was not up.
base-image: venv
	@bash examples/images/busybox/build-base.sh $(PYSWARM)

demo: setup
	@bash examples/demo.sh $(PYSWARM)

test: setup
	$(PY) proto/codegen.py --check
	$(PY) -m pytest -q tests

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy common worker cli manager

bench: setup
	@missing=$$(for p in $(BENCH_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	$(PY) bench/run_all.py
