"""The hub's egress proxy: the only way out of a sandbox (DESIGN.md, "Network policy").

``agents.egress.service`` opens and closes one agent's proxy (``egress_open``,
``egress_close``); ``agents.egress.policy`` reads allowlists and judges
addresses.
"""
