# One entry point for developers and CI: `make test` is what .ci/run runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
HOSTS ?= 2
SANDBOX := $(BIN)/python tests/sandbox/sandbox.py
COLLECTIONS_ROOT := $(CURDIR)/.build/collections
SANITY_ROOT := $(CURDIR)/.build/sanity/ansible_collections/llmserve/cluster
GET_PIP_CACHE := $(HOME)/.ansible/test/cache/get_pip_$(shell echo 24.2 | tr . _).py
# Generated reference docs of every role and plugin, checked in; `make docs` rewrites them.
DOCS_DIR := docs/collections
DOCS_BUILD := $(CURDIR)/.build/docs
# From the installed collection (the link above) through ansible-doc: offline, and without the
# antsibull-docs version in the output, so the same sources give the same files.
ANTSIBULL_DOCS := $(BIN)/antsibull-docs collection --use-current --output-format simplified-rst \
                  --no-add-antsibull-docs-version --fail-on-error

# Playbooks run from a checkout find the collection through this path.
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS_ROOT)
export PATH := $(BIN):$(PATH)

.PHONY: venv collection-link test lint ruff ansible-lint sanity unit integration build sandbox-caches \
        sandbox-up sandbox-down sandbox-status demo docs docs-build docs-check

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet --group dev
	touch $@

collection-link:
	mkdir -p $(COLLECTIONS_ROOT)/ansible_collections/llmserve
	ln -sfn $(CURDIR) $(COLLECTIONS_ROOT)/ansible_collections/llmserve/cluster

# `make test` prints each phase's wall time as it ends, and all of them at the end (.build/phase-times).
# After the linters, ansible-test sanity (its venvs wait on downloads) and the sandbox's caches (rootfs,
# wheelhouse, tiny models: network and disk) run in the background beside the unit tests, each with
# its output kept until it ends; integration starts once all three are done.
PHASE_TIMES := $(CURDIR)/.build/phase-times
TIMED := $(MAKE) --no-print-directory

test: venv collection-link
	@mkdir -p $(dir $(PHASE_TIMES)) && rm -f $(PHASE_TIMES)
	@$(TIMED) timed-ruff timed-ansible-lint timed-docs-check
	@$(TIMED) -j3 --output-sync=target timed-sanity timed-unit timed-sandbox-caches
	@$(TIMED) timed-integration
	@echo "make test: wall time per phase (sanity, unit and sandbox-caches ran side by side)"
	@cat $(PHASE_TIMES)

# timed-PHASE runs `make PHASE`, then prints and records its wall time; it fails when PHASE fails.
timed-%:
	@started=$$(date +%s); status=0; $(MAKE) --no-print-directory $* || status=$$?; \
	  line=$$(printf '%-15s %5d s' '$*' $$(( $$(date +%s) - started ))); \
	  if [ $$status -ne 0 ]; then line="$$line  FAILED (exit $$status)"; fi; \
	  echo "make test: $$line"; echo "$$line" >> $(PHASE_TIMES); exit $$status

# What the integration tests build on first use, built ahead: each step is a no-op when its cache is
# current. A failed step fails nothing here ("ignored"): the fixtures build the same cache and report why.
sandbox-caches: venv
	-$(SANDBOX) rootfs
	-$(BIN)/python tests/sandbox/wheelhouse.py
	-$(BIN)/python tests/sandbox/make_tiny_model.py --ensure-venv
	-$(BIN)/python tests/sandbox/make_tiny_gguf.py

lint: ruff ansible-lint docs-check

ruff: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ansible-lint: venv collection-link
	$(BIN)/ansible-lint --profile production

# Builds into .build/docs/collections: the docs of every role and plugin, from their argument specs
# and DOCUMENTATION, after checking every O()/M() reference in them points at something that exists.
docs-build: venv collection-link
	rm -rf $(DOCS_BUILD) && mkdir -p $(DOCS_BUILD)
	cd $(COLLECTIONS_ROOT)/ansible_collections/llmserve/cluster && \
	  $(BIN)/antsibull-docs lint-collection-docs --plugin-docs --validate-collection-refs=self .
	$(ANTSIBULL_DOCS) --dest-dir $(DOCS_BUILD) llmserve.cluster

docs: docs-build
	rm -rf $(DOCS_DIR) && mkdir -p $(dir $(DOCS_DIR)) && cp -R $(DOCS_BUILD)/collections $(DOCS_DIR)

# CI: the checked-in docs must be what the sources generate now.
docs-check: docs-build
	@diff -r $(DOCS_DIR) $(DOCS_BUILD)/collections > $(DOCS_BUILD).diff || { \
	  cat $(DOCS_BUILD).diff | head -n 60; \
	  echo "$(DOCS_DIR) is stale: run 'make docs' and commit the result."; exit 1; }
	@echo "$(DOCS_DIR) matches the argument specs and DOCUMENTATION."

# ansible-test insists on running from a directory named ansible_collections/<ns>/<name>,
# so the files git knows about are copied there.
sanity: venv
	rm -rf $(SANITY_ROOT) && mkdir -p $(SANITY_ROOT)
	git ls-files -co --exclude-standard -z | rsync -a --from0 --files-from=- ./ $(SANITY_ROOT)/
	mkdir -p $(dir $(GET_PIP_CACHE)) && cp tests/sanity/offline_get_pip.py $(GET_PIP_CACHE)
	cd $(SANITY_ROOT) && git init -q && git add -A && \
	  $(BIN)/ansible-test sanity --local --python 3.11 --color no

unit: venv
	$(BIN)/python -m pytest tests/unit -q

integration: venv collection-link
	$(BIN)/python -m pytest tests/integration -q -x --durations=40

build: venv
	$(BIN)/ansible-galaxy collection build --force --output-path .build/dist

sandbox-up: venv
	$(SANDBOX) up --hosts $(HOSTS)

sandbox-down: venv
	$(SANDBOX) down

sandbox-status: venv
	$(SANDBOX) status

# The main job: the sandbox deploys a tiny model with the native backend and answers a completion.
demo: venv collection-link
	$(BIN)/python tests/sandbox/demo.py --hosts $(HOSTS)
