# Everlook developer entry points. Every target creates .venv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test test-fast lint format demo bench clean

# detectron2 is not on the package index: ../shared/wheels holds a build of its official
# source for this torch; where that folder exists it is installed, so the detectron2
# segmenter runs in the tests (elsewhere the Mask2Former backend stands in).
WHEELS ?= ../shared/wheels

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,dev,mask2former]'
	if [ -d $(WHEELS) ] && ls $(WHEELS)/detectron2-*.whl >/dev/null 2>&1; then \
		$(PY) -m pip install --quiet --disable-pip-version-check \
			--find-links $(WHEELS) 'detectron2' 'setuptools<81'; fi
	touch $(STAMP)

install: $(STAMP)

# The whole suite, slow tests included (CI runs this through .ci/run).
test: $(STAMP)
	$(PY) -m pytest -q

# Everything but the tests marked slow, for a quick loop while editing.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: $(STAMP)
	$(PY) tools/demo.py

bench: $(STAMP)
	$(PY) bench/index_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
