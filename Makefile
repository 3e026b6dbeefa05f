# Two commands do all the setup on a fresh machine: `make demo` and `make test`.
# Both create .venv with Python >= 3.12 (pyenv picks 3.12 through .python-version)
# and install the package with its test extras the first time.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install clean gpu-check

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "lth needs Python >= 3.12; found " + sys.version.split()[0] + ": install 3.12 (pyenv install 3.12) or run make PYTHON=python3.12")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lth run runs/demo_digits.toml --out results/demo
	$(VENV)/bin/lth report $$($(VENV)/bin/lth config runs/demo_digits.toml | tail -n 1 | cut -d ' ' -f 3) \
		--out results/demo --html results/demo/report.html

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# On a GPU machine, with the system's torch (no .venv, nothing installed): the device
# check of the README's "The device check on a GPU machine". DATA holds MNIST/raw/*.gz and
# cifar10-jpeg.zip.
DATA ?= data
OUT ?= results/gpu_check
gpu-check:
	$(PYTHON) -m runs.gpu_check --data $(DATA) --out $(OUT) --device cuda

clean:
	rm -rf $(VENV) results *.egg-info
