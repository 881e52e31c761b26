"""The model gateway: CLI agents reach their model through the hub, never with a real key.

``service`` opens and closes one agent's gateway (a Unix socket bound into its
sandbox); ``server`` serves it; ``providers`` knows the Anthropic and OpenAI
endpoints, keys, error shapes and how each reports usage in its replies.
"""
