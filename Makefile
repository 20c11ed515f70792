# Two commands do all the set-up: `make demo` and `make test`. Each creates (or reuses) the
# virtual environment .venv with every package of the design, pinned in requirements/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat requirements/*.txt pyproject.toml | cksum | cut -d' ' -f1)
LEGACY := .venv-legacy
LEGACY_STAMP := $(LEGACY)/.installed-$(shell cat requirements/legacy.txt pyproject.toml | cksum | cut -d' ' -f1)
DEMO_OUT ?= demo_out

.PHONY: venv demo demo-quick dmu-demo test test-fast legacy-venv test-legacy bench clean

venv: $(STAMP)

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	# torch first, so that nothing below resolves to another torch build
	$(PIP) install -q -r requirements/torch.txt
	$(PIP) install -q -r requirements/torch.txt -r requirements/base.txt
	# DeepSpeed's CPU communication op is compiled now, not at the first launch of a test
	DS_BUILD_SHM_COMM=1 $(PIP) install -q --no-build-isolation --no-cache-dir deepspeed==0.19.8
	# llava-torch pins 2023 releases of everything: install it alone, its real imports are in base.txt
	$(PIP) install -q --no-deps llava-torch==1.2.2.post1
	# sentencepiece 0.2.3 reads tokenizer.model (Vicuna's) only with protobuf >= 7.36.1; lmms-eval pins
	# wandb 0.25.0, which asks for protobuf < 7 but is only imported for --wandb_args (guarded there)
	$(PIP) install -q --no-deps protobuf==7.36.2
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

# The main job: DMU demo -> LLaVA trained with each tower (DeepSpeed scripts) -> benchmarks -> report
demo: venv
	$(VENV)/bin/clipmoe-demo chain --out $(DEMO_OUT)

demo-quick: venv
	$(VENV)/bin/clipmoe-demo chain --quick --out $(DEMO_OUT)

# The DMU part alone (dense CLIP -> CLIP-MoE and both baselines, zero-shot table)
dmu-demo: venv
	$(VENV)/bin/clipmoe-demo encoder --out $(DEMO_OUT)/demo

test: venv legacy-venv
	$(PY) -m pytest -q tests
	$(MAKE) test-legacy

# LLaVA's own pins (transformers 4.37.2, accelerate 0.34.2, peft 0.10.0): the integration tests
# also run there, so the plugin keeps working for users of upstream LLaVA as published.
legacy-venv: $(LEGACY_STAMP)

$(LEGACY_STAMP):
	$(PYTHON) -m venv $(LEGACY)
	$(LEGACY)/bin/pip install -q torch==2.13.0
	$(LEGACY)/bin/pip install -q torch==2.13.0 -r requirements/legacy.txt
	# DeepSpeed's CPU communication op is compiled now (as in .venv), not at the first launch
	DS_BUILD_SHM_COMM=1 $(LEGACY)/bin/pip install -q --no-build-isolation --no-cache-dir deepspeed==0.19.8
	$(LEGACY)/bin/pip install -q --no-deps llava-torch==1.2.2.post1
	$(LEGACY)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Only the folders whose tests are marked `legacy`: the others import packages (sklearn,
# open_clip, lmms-eval) that this environment leaves out on purpose.
test-legacy: legacy-venv
	$(LEGACY)/bin/python -m pytest -q -m "legacy" tests/encoder tests/llava tests/zeroshot

bench: venv
	$(PY) scripts/bench_moe.py --model l14-336 --batch 4

clean:
	rm -rf $(VENV) $(LEGACY) $(DEMO_OUT)
