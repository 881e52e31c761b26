"""DRF authentication for the federation inbox: every view goes through the chokepoint."""

from dataclasses import dataclass

from django.core.exceptions import RequestDataTooBig
from django.http.request import RawPostDataException
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from federation.models import Peer
from federation.services import (
    MAX_BODY_BYTES,
    InboundRequest,
    VerifiedRequest,
    federation_request_verify,
)


@dataclass(frozen=True)
class PeerPrincipal:
    """``request.user`` of a federation view: the peer hub whose signature was verified."""

    peer: Peer | None
    instance_id: str

    is_authenticated = True
    is_staff = False

    def get_username(self) -> str:
        return f"peer:{self.instance_id}"


def inbound_request(request: Request) -> InboundRequest:
    django_request = request._request
    try:
        declared = int(django_request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    body = b""
    if declared <= MAX_BODY_BYTES:  # a larger body is refused unread
        try:
            body = django_request.body
        except (RawPostDataException, RequestDataTooBig):
            declared = MAX_BODY_BYTES + 1
    return InboundRequest(
        method=django_request.method or "",
        url=django_request.build_absolute_uri(),
        path=django_request.path,
        headers=dict(django_request.headers),
        body=body,
        content_length=declared,
        remote_addr=django_request.META.get("REMOTE_ADDR", ""),
    )


class FederationSignatureAuthentication(BaseAuthentication):
    """RFC 9421 signature of a peer hub; refuses (never returns None) when it does not hold."""

    connect = False

    def authenticate(self, request: Request) -> tuple[PeerPrincipal, VerifiedRequest]:
        verified = federation_request_verify(request=inbound_request(request), connect=self.connect)
        instance_id = verified.body.get("instance_id", "")
        return PeerPrincipal(peer=verified.peer, instance_id=instance_id), verified

    def authenticate_header(self, request: Request) -> str:
        return 'Signature realm="flotilla-federation-v1"'


class FederationConnectAuthentication(FederationSignatureAuthentication):
    connect = True
