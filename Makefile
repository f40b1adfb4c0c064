# Two entry points a newcomer needs: `make demo` and `make test`.
# Both create .venv on first use. torch is installed as the CPU wheel
# (torch==2.13.0) only when the venv has no torch yet: an unpinned install would
# pull a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH_CPU ?= torch==2.13.0

.PHONY: setup demo test docs install-check bench diagnosis samples clean

setup: $(STAMP)

# Extras that depend on torch (transformers, lightning) are installed with the installed
# torch held as a constraint, so pip never swaps in another (CUDA) build. The editable
# install also compiles the fused kernel (setup.py) into deadrelu/, again when its C changes.
$(STAMP): pyproject.toml setup.py deadrelu/fused_kernel.c deadrelu/_fused.c deadrelu/_kernel_flags.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_CPU)
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e '.[test,formats,hf,lightning,tensorboard,mlflow,wandb,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/deadrelu scan sample_models/mlp_high_lr.pt sample_models/mlp_data.npy \
		--arch sample_models/archs.py:HighLrMLP --json reports/demo.json

test: $(STAMP)
	$(PY) -m pytest -q

# The documentation site into site/ (mkdocs.yml; warnings are errors). Its examples run in tests/test_docs.py.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# Fresh venvs as users install: no extras, oldest declared versions, each extra alone, the built wheel and sdist (CI runs it).
install-check: $(STAMP)
	.ci/install-check

samples: $(STAMP)
	$(PY) sample_models/make_samples.py

bench: $(STAMP)
	$(PY) benchmarks/overhead.py

# Does the top suggestion name the cause? The zoo of models trained to die for a known cause.
diagnosis: $(STAMP)
	$(PY) benchmarks/diagnosis.py --seeds 4

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis site
