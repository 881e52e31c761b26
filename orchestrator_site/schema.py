"""OpenAPI generation: unique component names for the house style's nested serializers.

Every API view nests its own ``InputSerializer`` and ``OutputSerializer``
(docs/architecture.md). drf-spectacular names a component after the class
alone, so all of them collapsed into one ``InputRequest`` and one ``Output``
component and the published schema described most endpoints wrongly. Here a
serializer defined inside a view is named after the view as well:
``AgentSpawnApi.InputSerializer`` becomes ``AgentSpawnInput``.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema


class ViewScopedAutoSchema(AutoSchema):
    def get_serializer_name(self, serializer, direction: str) -> str:  # noqa: ANN001
        serializer_class = type(serializer)
        owner, _, name = serializer_class.__qualname__.rpartition(".")
        if not owner or "<locals>" in owner:
            return super().get_serializer_name(serializer, direction)
        view_name = owner.split(".")[-1].removesuffix("Api").removesuffix("View")
        return f"{view_name}{name.removesuffix('Serializer')}"


class FederationSignatureScheme(OpenApiAuthenticationExtension):
    """Federation inbox requests are signed per RFC 9421 (docs/federation.md)."""

    target_class = "federation.authentication.FederationSignatureAuthentication"
    name = "federationSignature"

    def get_security_definition(self, auto_schema):  # noqa: ANN001
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Signature",
            "description": "RFC 9421 HTTP Message Signature (ed25519, label sig1) with "
            "Signature-Input and Content-Digest; see docs/federation.md.",
        }


class FederationConnectScheme(FederationSignatureScheme):
    target_class = "federation.authentication.FederationConnectAuthentication"
    name = "federationConnectSignature"
