# make demo: install into .venv, then the whole mission on synthetic shapes in minutes.
# make test: install into .venv, then the test suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
FRCNN  := $(VENV)/bin/frcnn
DEMO   ?= demo

.PHONY: demo test lint install clean

install: $(VENV)/.installed

# Re-installs when pyproject.toml changes; plain pip so torch comes from the local wheel cache.
# tidecv, the tests' reference for the error analysis, goes in without its dependencies: it
# names opencv-python, which would replace the cv2 of opencv-contrib-python-headless (Selective
# Search needs its ximgproc); what it imports is in the dev extra.
TIDECV := tidecv==1.0.1
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(TIDECV)
	touch $@

# Two workers (pytest-xdist), a test file each at a time (tests/conftest.py sets their threads).
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: install
	$(VENV)/bin/ruff check frcnn_cli tests benchmarks

# The demo: synthetic shapes -> the paper's 4-step alternating training -> VOC07 evaluation ->
# predictions drawn on validation images -> ONNX export checked against PyTorch.
# Rerunning it keeps what is already done (the data and every finished stage).
demo: install
	test -f $(DEMO)/data/train.json || \
		$(FRCNN) data synth $(DEMO)/data --train 600 --val 100 --size 256 --seed 0
	$(FRCNN) train-alt --recipe shapes --train $(DEMO)/data/train.json --out $(DEMO)/run
	$(FRCNN) eval $(DEMO)/run/model.pt --data $(DEMO)/data/val.json --metric voc07 \
		--json $(DEMO)/run/eval.json --plot $(DEMO)/run/plots
	$(FRCNN) predict $(DEMO)/run/model.pt $(DEMO)/data/images/val/00000[1-8].jpg \
		--out $(DEMO)/predictions
	$(FRCNN) export $(DEMO)/run/model.pt --format onnx --out $(DEMO)/model.onnx
	@echo
	@echo "Everything is in $(DEMO)/:"
	@echo "  data/                 synthetic shapes (train.json, val.json, images/)"
	@echo "  run/stage1-rpn/ ...   the four stages, each a run folder with model.pt and plots/"
	@echo "  run/model.pt          the final shared model"
	@echo "  run/eval.json         VOC07 AP per class and mAP; run/plots/ precision-recall curves"
	@echo "  predictions/          detections.json and the validation images with boxes drawn"
	@echo "  model.onnx            the whole detector for onnxruntime, any image size"

clean:
	rm -rf $(DEMO) build dist .pytest_cache
