# metacart: two commands on a fresh machine.
#   make demo   starts the broker, trains a small meta-policy, runs the live closed loop, writes a report
#   make test   starts the broker and runs the whole test suite (unit + integration against real Kafka)
# Both set up everything they need first: the virtualenv, the package, the broker's jars.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BROKER := deploy/kafka/broker.sh
PYTEST_ARGS ?=

.PHONY: demo test unit integration bench broker-start broker-stop venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

broker-start:
	$(BROKER) start

broker-stop:
	$(BROKER) stop

test: $(STAMP) broker-start
	@status=0; $(PY) -m pytest tests $(PYTEST_ARGS) || status=$$?; $(BROKER) stop; exit $$status

unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

demo: $(STAMP) broker-start
	@status=0; $(VENV)/bin/metacart demo || status=$$?; $(BROKER) stop; exit $$status

bench: $(STAMP) broker-start
	@status=0; $(VENV)/bin/metacart bench all --out-dir reports || status=$$?; $(BROKER) stop; exit $$status

clean:
	-$(BROKER) stop
	rm -rf var reports artifacts .pytest_cache
