"""Signals that let higher layers follow agents without the agents app importing them.

``agent_finished`` is sent once per agent, after the transaction that moved it
to a final state (completed, failed, killed) has committed, in whichever
process made that move: a worker finishing a run, a web process handling a
kill, the reconciler. Receivers get ``agent_id`` (a string) and ``state``.
They must be quick and must not raise: hand real work to django-q2.
"""

from django.dispatch import Signal

agent_finished = Signal()
