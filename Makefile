.PHONY: hub test

# Set up and start a hub on 127.0.0.1:8000 with a demo ready to click.
hub:
	scripts/setup
	.venv/bin/python manage.py demo
	.venv/bin/python manage.py runhub

# Set up and run the whole test suite.
test:
	scripts/test
