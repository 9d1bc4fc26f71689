# make demo: create .venv, install, run the main job on the bundled induction-2l model.
# make test: create .venv (transformer-lens 4.x) and .venv-tl2 (transformer-lens 2.18), lint,
#            type-check, install chromium for the report's browser test, and run the whole suite on both.
# TORCH picks the torch build: the default is the CPU wheel; on a GPU machine use e.g.
#   make test TORCH="torch>=2.2" TORCH_INDEX=https://download.pytorch.org/whl/cu124
PYTHON ?= python3
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
TL4 ?= transformer-lens>=4.3,<5
TL2 ?= transformer-lens==2.18.0
# transformer-lens 2.18 pins numpy<2 but pulls a pyarrow/datasets that need numpy 2.
TL2_EXTRA ?= "pyarrow<21" "datasets<5"
PIP_FLAGS ?= -q --disable-pip-version-check
INDEX_FLAG = $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

.PHONY: demo test lint typecheck browser test-tl4 test-tl2 bench clean

.venv/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv .venv
	.venv/bin/pip install $(PIP_FLAGS) "$(TORCH)" $(INDEX_FLAG)
	.venv/bin/pip install $(PIP_FLAGS) -e ".[dev]" "$(TORCH)" "$(TL4)" $(INDEX_FLAG)
	touch $@

.venv-tl2/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv .venv-tl2
	.venv-tl2/bin/pip install $(PIP_FLAGS) "$(TORCH)" $(INDEX_FLAG)
	.venv-tl2/bin/pip install $(PIP_FLAGS) -e ".[dev]" "$(TORCH)" "$(TL2)" $(TL2_EXTRA) $(INDEX_FLAG)
	touch $@

demo: .venv/.installed
	.venv/bin/tl-submodels discover --model induction-2l --task induction --out out/induction-2l.circuit.json

lint: .venv/.installed
	.venv/bin/ruff check tl_submodels tests scripts notebooks
	.venv/bin/ruff format --check tl_submodels tests scripts notebooks

typecheck: .venv/.installed
	.venv/bin/mypy tl_submodels

# On TL 4 every test but the deliberately ill-typed ones also runs under jaxtyping + beartype,
# which checks every annotated tensor shape in tl_submodels at run time.
# XDIST: one worker per core, each test file in one worker (so module fixtures are computed once);
# make test XDIST= runs in one process.
XDIST ?= -n auto --dist loadfile
test-tl4: .venv/.installed
	.venv/bin/python -m pytest tests $(XDIST) -m "not ill_typed" --jaxtyping-packages=tl_submodels,beartype.beartype
	.venv/bin/python -m pytest tests -m ill_typed

test-tl2: .venv-tl2/.installed
	.venv-tl2/bin/python -m pytest tests $(XDIST)

# The report's browser test needs Debian's chromium + chromedriver: installed here when missing and apt-get
# is usable; otherwise that test is skipped and says why (pytest -ra lists it).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
		echo "browser test: $$(command -v chromium)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "browser test: installing Debian's chromium and chromium-driver"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; } || \
		echo "NOTE: apt-get could not install chromium: the report browser test will be skipped"; \
	else \
		echo "NOTE: no chromium and no root apt-get: the report browser test will be skipped"; \
	fi

test: lint typecheck browser test-tl4 test-tl2

bench: .venv/.installed
	.venv/bin/python scripts/bench_patching.py

clean:
	rm -rf .venv .venv-tl2 out
