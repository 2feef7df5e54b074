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
# The broker's port; clients follow it (METACART_KAFKA__BOOTSTRAP). Change it to run beside another broker.
BROKER_PORT ?= 9092
export METACART_BROKER_PORT := $(BROKER_PORT)
export METACART_BROKER_CONTROLLER_PORT := $(shell expr $(BROKER_PORT) + 1)
export METACART_KAFKA__BOOTSTRAP := 127.0.0.1:$(BROKER_PORT)

.PHONY: demo test unit integration bench broker-start broker-stop venv clean compose-config

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[train,test]'
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

# `docker compose config` without Docker: compose-go (the loader docker compose uses) built from the Go
# module proxy validates docker-compose.yml against the compose specification and prints the result.
compose-config:
	cd deploy/compose-check && go build -o ../../var/compose-check .
	var/compose-check docker-compose.yml

clean:
	-$(BROKER) stop
	rm -rf var reports artifacts .pytest_cache
