from collections.abc import Callable
from typing import TYPE_CHECKING

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html_join
from django.utils.safestring import SafeString, mark_safe

from federation import signing
from federation.documents import key_fingerprints
from federation.errors import FederationError
from federation.models import InboundMessage, InstanceKey, Peer, RemoteAgent
from federation.services import PEER_ACTIONS, peer_transition

# Django's admin classes are generic only in the stubs; subscripting them at
# run time would fail, so the parametrised bases exist for the type checker.
if TYPE_CHECKING:
    _PeerAdminBase = admin.ModelAdmin[Peer]
    _InstanceKeyAdminBase = admin.ModelAdmin[InstanceKey]
    _InboundMessageAdminBase = admin.ModelAdmin[InboundMessage]
    _RemoteAgentAdminBase = admin.ModelAdmin[RemoteAgent]
else:
    _PeerAdminBase = _InstanceKeyAdminBase = admin.ModelAdmin
    _InboundMessageAdminBase = _RemoteAgentAdminBase = admin.ModelAdmin

_PeerAction = Callable[[_PeerAdminBase, HttpRequest, QuerySet[Peer]], None]


def _peer_action(action: str) -> _PeerAction:
    @admin.action(description=f"{action.title()} selected peers", permissions=("change",))
    def run(modeladmin: _PeerAdminBase, request: HttpRequest, queryset: QuerySet[Peer]) -> None:
        actor = f"user:{request.user.get_username()}"
        done, refused = 0, []
        for peer in queryset:
            try:
                peer_transition(
                    peer_id=peer.id, action=action, actor=actor, reason="from the admin"
                )
                done += 1
            except FederationError as error:
                refused.append(f"{peer.instance_id}: {error.message}")
        modeladmin.message_user(
            request,
            f"{action}: {done} of {queryset.count()} peers."
            + (f" Refused: {'; '.join(refused)}" if refused else ""),
            messages.SUCCESS if not refused else messages.WARNING,
        )

    run.__name__ = f"peer_{action}"
    return run


@admin.register(Peer)
class PeerAdmin(_PeerAdminBase):
    # The fingerprints are on the list the accept action runs from: an admin
    # compares them with the peer's operator before accepting.
    list_display = [
        "instance_id",
        "name",
        "url",
        "state",
        "fingerprints",
        "last_seen",
        "initiated_here",
    ]
    list_filter = ["state", "initiated_here"]
    search_fields = ["instance_id", "name", "url"]
    # State and keys change only through the audited actions; quotas and
    # allowed commands are the operator's to edit here.
    readonly_fields = [
        "id",
        "instance_id",
        "name",
        "url",
        "state",
        "fingerprints",
        "keys",
        "capabilities",
        "initiated_here",
        "last_seen",
        "created_at",
        "updated_at",
    ]
    actions = [_peer_action(action) for action in PEER_ACTIONS]

    @admin.display(description="key fingerprints (SHA-256)")
    def fingerprints(self, peer: Peer) -> SafeString:
        return format_html_join(
            mark_safe("<br>"),
            "{}: <code>{}</code>",
            ((key["key_id"], key["fingerprint"]) for key in key_fingerprints(peer.keys)),
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(InstanceKey)
class InstanceKeyAdmin(_InstanceKeyAdminBase):
    list_display = ["version", "fingerprint", "created_at", "expires_at"]
    exclude = ["private_key_encrypted"]
    readonly_fields = ["version", "public_key", "fingerprint", "created_at", "expires_at"]

    @admin.display(description="fingerprint (SHA-256)")
    def fingerprint(self, key: InstanceKey) -> str:
        return signing.key_fingerprint(key.public_key)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(InboundMessage)
class InboundMessageAdmin(_InboundMessageAdminBase):
    list_display = ["message_id", "peer", "command", "response_status", "created_at"]
    list_filter = ["command", "response_status"]
    readonly_fields = [
        "peer",
        "message_id",
        "command",
        "body_sha256",
        "response_status",
        "response_body",
        "created_at",
    ]


@admin.register(RemoteAgent)
class RemoteAgentAdmin(_RemoteAgentAdminBase):
    list_display = ["agent", "peer", "remote_agent_id", "last_event_id"]
    readonly_fields = ["agent", "peer", "remote_agent_id", "last_event_id"]
