import uuid

from django.db import models


class AgentType(models.TextChoices):
    WORKER = "worker"
    REVIEWER = "reviewer"
    TESTER = "tester"


class Runtime(models.TextChoices):
    CLAUDE = "claude"
    SCRIPT = "script"
    # CLI agents run in the sandbox behind the model gateway (agents/runtimes/cli).
    CLAUDE_CODE = "claude-code"
    CODEX = "codex"


class AgentState(models.TextChoices):
    QUEUED = "queued"
    SPAWNING = "spawning"
    RUNNING = "running"
    PAUSED = "paused"
    GATING = "gating"
    PUSHING = "pushing"
    COMPLETED = "completed"
    FAILED = "failed"
    KILLED = "killed"


class NetworkMode(models.TextChoices):
    """What a sandbox may reach, always through the hub's egress proxy (DESIGN.md)."""

    OFF = "off"
    ALLOWLIST = "allowlist"
    ON = "on"


FINAL_STATES = frozenset({AgentState.COMPLETED, AgentState.FAILED, AgentState.KILLED})
LIVE_STATES = frozenset(set(AgentState) - FINAL_STATES)


class Agent(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task_id = models.CharField(max_length=100, db_index=True)
    agent_type = models.CharField(max_length=20, choices=AgentType.choices)
    runtime = models.CharField(max_length=20, choices=Runtime.choices)
    script = models.TextField(blank=True)
    repository = models.CharField(max_length=1000)
    base_branch = models.CharField(max_length=250)
    work_branch = models.CharField(max_length=250)
    work_items = models.JSONField(default=list, blank=True)
    skills = models.JSONField(default=list, blank=True)
    instructions = models.TextField(blank=True)
    options = models.JSONField(default=dict, blank=True)
    gate_profile = models.CharField(max_length=20, default="standard")
    sandbox_backend = models.CharField(max_length=20)
    timeout_s = models.PositiveIntegerField()
    network = models.CharField(max_length=10, choices=NetworkMode.choices, default=NetworkMode.OFF)
    max_retries = models.PositiveSmallIntegerField(default=0)
    attempt = models.PositiveSmallIntegerField(default=0)
    # Node supervisors claim queued agents highest priority first, then oldest,
    # each only from its own pool (FLOTILLA_NODE_POOL).
    priority = models.PositiveSmallIntegerField(default=5)
    pool = models.CharField(max_length=100, default="default")
    # A retry after a failure that was not the agent's own waits until then (backoff).
    run_after = models.DateTimeField(null=True, blank=True)
    # The supervisor holding the agent renews this every few seconds; when it
    # lapses past FLOTILLA_NODE_LEASE_S the node is lost and any node recovers the agent.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # A paused agent the operator resumed, waiting for the supervisor of its node.
    resume_requested = models.BooleanField(default=False)
    # Counts the claims: a run writes only while the row still carries the
    # count of its own claim, so a node that lost the agent (its lease lapsed
    # while it was frozen) cannot end or push the run another node took over.
    lease = models.PositiveIntegerField(default=0)

    state = models.CharField(
        max_length=20, choices=AgentState.choices, default=AgentState.QUEUED, db_index=True
    )
    progress = models.PositiveSmallIntegerField(default=0)
    sandbox_handle = models.JSONField(default=dict, blank=True)
    worktree_path = models.CharField(max_length=1000, blank=True)
    node = models.CharField(max_length=200, blank=True, db_index=True)
    # The worker process running the agent on ``node``, and its start time in
    # clock ticks since boot, so the reconciler can tell a dead supervisor
    # even when its pid has been reused.
    supervisor_pid = models.PositiveIntegerField(null=True, blank=True)
    supervisor_started = models.BigIntegerField(null=True, blank=True)
    requested_by = models.CharField(max_length=200)
    origin = models.CharField(
        max_length=200, default="local", help_text="The hub that asked for this agent."
    )

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    result = models.JSONField(default=dict, blank=True)
    # What the Claude runtime has spent so far, from the usage of every reply.
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cache_read_tokens = models.PositiveBigIntegerField(default=0)
    cache_write_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(progress__lte=100), name="agent_progress_at_most_100"
            ),
            models.CheckConstraint(
                condition=models.Q(priority__gte=1, priority__lte=10),
                name="agent_priority_1_to_10",
            ),
        ]
        indexes = [
            # The claim: queued agents in priority and age order.
            models.Index(
                fields=["state", "pool", "-priority", "created_at"], name="agent_claim_order"
            ),
            models.Index(fields=["state", "heartbeat_at"], name="agent_heartbeat"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.state})"

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


class AgentConversation(models.Model):
    """The Claude conversation of a paused agent, so that resuming it continues where it stopped.

    ``attempt`` is the agent's attempt it belongs to: a retry after a crash
    starts from a fresh worktree, so it must not continue an old conversation.
    """

    agent = models.OneToOneField(
        Agent, on_delete=models.CASCADE, primary_key=True, related_name="conversation"
    )
    attempt = models.PositiveSmallIntegerField(default=0)
    turns = models.PositiveIntegerField(default=0)
    messages = models.JSONField(default=list)
    saved_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"conversation of {self.agent_id} ({self.turns} turns)"


class AgentEventKind(models.TextChoices):
    STATE = "state"
    OUTPUT = "output"
    LOG = "log"
    GATE = "gate"
    TRANSCRIPT = "transcript"
    # A connection the sandbox made through the hub's egress proxy, allowed or refused.
    NETWORK = "network"


class AgentEvent(models.Model):
    """One thing that happened to an agent; ids only grow, so a reader resumes after one."""

    id = models.BigAutoField(primary_key=True)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=20, choices=AgentEventKind.choices)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["agent", "id"])]

    def __str__(self) -> str:
        return f"#{self.id} {self.kind} {self.agent_id}"


class IdempotentRequest(models.Model):
    """A POST sent with an ``Idempotency-Key``, and the answer it got (agents/idempotency.py).

    The row is written before the request acts, so a retry that arrives while
    the first is still running finds it (and is told so) instead of acting too.
    ``response_status`` stays null until the answer is stored.
    """

    id = models.BigAutoField(primary_key=True)
    principal = models.CharField(max_length=200)
    key = models.CharField(max_length=255)
    endpoint = models.CharField(max_length=200)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the canonical JSON body.")
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    # The body as rendered, so a replay is the same bytes on every database.
    response_body = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["principal", "key"], name="idempotency_key_once_per_principal"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.principal} {self.key}"
