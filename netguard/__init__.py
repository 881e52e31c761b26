"""What the hub's own network traffic may reach: the lowest layer, below ``audit``.

``netguard.addresses`` classifies hosts and addresses (no Django); the
sandboxes' egress proxy (``agents.egress``) and the hub's outbound guard
(``netguard.outbound``, ``netguard.http``) both judge an address with it, so
"private" means the same thing to each. Not a Django app: no models, and it
imports nothing else of the project.
"""
