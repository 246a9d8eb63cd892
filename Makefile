# The two commands a fresh machine needs (see README): `make demo` and `make test`.
VENV := .venv

.PHONY: install demo test down

install:
	@deploy/bootstrap.sh

demo: install
	$(VENV)/bin/runlog up
	$(VENV)/bin/runlog demo

test: install
	$(VENV)/bin/python -m pytest

down:
	$(VENV)/bin/runlog down
