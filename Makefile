# Everlook developer entry points. Every target creates .venv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test test-fast browser lint format demo serve-demo bench clean

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

# The whole suite, slow tests included (CI runs this through .ci/run). The browser tests
# drive Debian's chromium: installed through apt when missing and this machine allows
# (root, apt-get); elsewhere they skip saying so. Two pytest-xdist workers, a module
# each at a time (its module fixtures built once): much of the suite waits on servers
# and subprocesses, so two workers on two cores finish in ~2/3 of the serial time.
test: $(STAMP) browser
	$(PY) -m pytest -q -n 2 --dist loadscope

browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			echo "installing chromium for the browser tests (apt-get)"; \
			(apt-get install -y -qq chromium >/dev/null 2>&1 || \
			 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1)) \
			|| echo "could not install chromium: the browser tests will skip"; \
		else echo "no chromium and no apt as root: the browser tests will skip"; fi; }

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

# The web page and API over the demo library, at http://127.0.0.1:8000/
serve-demo: $(STAMP)
	$(PY) tools/demo.py serve

bench: $(STAMP)
	$(PY) bench/index_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
