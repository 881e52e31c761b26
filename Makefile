.PHONY: hub test

# Set up and start a hub on 127.0.0.1:8000 with a demo ready to click. The demo
# hub serves the sample repositories from DATA_DIR/demo, and may reach local
# addresses (a second hub, a webhook receiver on this machine). One sample's
# [setup] installs PyYAML from PyPI through the egress proxy; the registries
# are named as host:port, so they are reached also where they resolve to a
# private address (a registry mirror, a proxy on the network). Where none can
# be reached, that one agent fails saying so, and nothing else does.
hub: export FLOTILLA_LOCAL_REPOSITORY_ROOTS ?= $(abspath $(or $(DATA_DIR),var))/demo
hub: export FLOTILLA_ALLOW_PRIVATE_URLS ?= true
hub: export FLOTILLA_EGRESS_ALLOWLIST ?= pypi.org:443,files.pythonhosted.org:443,registry.npmjs.org:443,registry.yarnpkg.com:443,github.com:443,codeload.github.com:443,objects.githubusercontent.com:443
hub:
	scripts/setup
	.venv/bin/python manage.py demo --with-setup
	.venv/bin/python manage.py runhub

# Set up and run the whole test suite.
test:
	scripts/test
