# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make demo   - create .venv, install, run the demo
#   make test   - create .venv, install, run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: test demo data browser venv bench clean

venv: $(STAMP)

# torch/torchvision are pinned as a pair and installed once; the stamp keeps a warm venv from
# reinstalling them (the stamp is renewed only when pyproject.toml changes).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[demo,test,integrations]"
	touch $(STAMP)

# Fashion-MNIST from the Debian package (needs root); otherwise say how to get it. The package
# lists are fetched with their English long descriptions (Translation-en), which the bench's text
# set (curriculum/cli/real_embeddings.py) embeds.
data:
	@if [ -f $(FMNIST) ]; then echo "Fashion-MNIST: $(FMNIST)"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		(apt-get update -q -o Acquire::Languages=en && apt-get install -y -q dataset-fashion-mnist) >/dev/null && echo "Fashion-MNIST installed"; \
	else echo "Fashion-MNIST not found: as root run 'apt-get install dataset-fashion-mnist', or pass --data PATH / set CURRICULUM_FMNIST to a folder holding the four IDX files"; fi

# headless Chromium for the report's browser test (tests/test_inspect.py, marker "browser"); without
# root the test is skipped and says how to get it.
browser:
	@if command -v chromium >/dev/null; then echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		((apt-get update -q -o Acquire::Languages=en && apt-get install -y -q chromium) >/dev/null && echo "chromium installed") || \
		echo "chromium could not be installed: the report's browser test will be skipped"; \
	else echo "chromium not found: the report's browser test will be skipped ('apt-get install chromium')"; fi

test: $(STAMP) data browser
	$(PY) -m pytest -q -x --timeout=900

demo: $(STAMP) data
	$(VENV)/bin/curriculum demo

bench: $(STAMP) data
	$(VENV)/bin/curriculum bench

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
