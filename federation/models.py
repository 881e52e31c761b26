import uuid

from django.db import models
from django.utils import timezone


class InstanceKey(models.Model):
    """One version of this hub's Ed25519 signing key; the private half is encrypted."""

    version = models.PositiveIntegerField(unique=True)
    public_key = models.CharField(max_length=64, help_text="base64url of the 32 raw bytes")
    private_key_encrypted = models.TextField(help_text="Fernet token under FLOTILLA_FEDERATION_KEY")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-version"]

    def __str__(self) -> str:
        return f"key v{self.version}"


class PeerState(models.TextChoices):
    PENDING = "PENDING"
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    DISCONNECTED = "DISCONNECTED"


class Peer(models.Model):
    """Another hub, with the keys pinned when it was accepted and what it may ask of us."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    instance_id = models.CharField(max_length=100, unique=True)
    name = models.CharField(max_length=200)
    url = models.URLField(max_length=500)
    state = models.CharField(
        max_length=20, choices=PeerState.choices, default=PeerState.PENDING, db_index=True
    )
    keys = models.JSONField(default=list, help_text="[{key_id, alg, public_key, created, expires}]")
    capabilities = models.JSONField(default=list, blank=True)
    initiated_here = models.BooleanField(default=False)
    allowed_commands = models.JSONField(default=list, blank=True)
    max_concurrent_agents = models.PositiveIntegerField()
    requests_per_minute = models.PositiveIntegerField()
    last_seen = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["instance_id"]

    def __str__(self) -> str:
        return f"{self.instance_id} ({self.state})"


class SeenNonce(models.Model):
    """A signature nonce already accepted; kept until its signature ages out of the window."""

    id = models.BigAutoField(primary_key=True)
    key_id = models.CharField(max_length=200)
    nonce = models.CharField(max_length=200)
    peer = models.ForeignKey(Peer, null=True, blank=True, on_delete=models.CASCADE)
    received_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["key_id", "nonce"], name="federation_nonce_once"),
        ]
        indexes = [models.Index(fields=["peer", "received_at"])]

    def __str__(self) -> str:
        return f"{self.key_id} {self.nonce}"


class ConnectAttempt(models.Model):
    """A connect that no recorded key signed, by source address: the per-address rate's count.

    Kept only as long as the rate's period (``federation.pending``); a
    peer's own signed connects are never counted.
    """

    id = models.BigAutoField(primary_key=True)
    remote_addr = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["remote_addr", "created_at"])]

    def __str__(self) -> str:
        return f"{self.remote_addr} at {self.created_at:%Y-%m-%d %H:%M:%S}"


class InboundMessage(models.Model):
    """A command a peer sent, with the response we gave: ``message_id`` is an idempotency key."""

    id = models.BigAutoField(primary_key=True)
    peer = models.ForeignKey(Peer, on_delete=models.CASCADE, related_name="messages")
    message_id = models.CharField(max_length=200)
    command = models.CharField(max_length=50)
    body_sha256 = models.CharField(max_length=64)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["peer", "message_id"], name="federation_message_once"),
        ]

    def __str__(self) -> str:
        return f"{self.message_id} ({self.command})"


class RemoteAgent(models.Model):
    """Hub side: a local agent row that stands for an agent running on a peer."""

    agent = models.OneToOneField(
        "agents.Agent", primary_key=True, on_delete=models.CASCADE, related_name="remote"
    )
    peer = models.ForeignKey(Peer, on_delete=models.PROTECT, related_name="remote_agents")
    remote_agent_id = models.UUIDField()
    last_event_id = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["peer", "remote_agent_id"], name="federation_remote_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent_id} -> {self.remote_agent_id}"


class EventRelay(models.Model):
    """Spoke side: how far an agent's events have been pushed to the hub that asked for it."""

    agent = models.OneToOneField(
        "agents.Agent", primary_key=True, on_delete=models.CASCADE, related_name="relay"
    )
    peer = models.ForeignKey(Peer, on_delete=models.CASCADE, related_name="relays")
    last_sent_id = models.BigIntegerField(default=0)
    pending = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"{self.agent_id} sent up to #{self.last_sent_id}"
