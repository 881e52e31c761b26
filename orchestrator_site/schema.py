"""OpenAPI generation: unique component names for the house style's nested serializers.

Every API view nests its own ``InputSerializer`` and ``OutputSerializer``
(docs/architecture.md). drf-spectacular names a component after the class
alone, so all of them collapsed into one ``InputRequest`` and one ``Output``
component and the published schema described most endpoints wrongly. Here a
serializer defined inside a view is named after the view as well:
``AgentSpawnApi.InputSerializer`` becomes ``AgentSpawnInput``.
"""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import Direction
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.serializers import Serializer

# Every error, from any view, is this body (orchestrator_site/errors.py).
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}
ERROR_STATUSES = {
    "400": "Malformed input; `fields` names what is wrong.",
    "401": "Missing or invalid credentials (or signature, for the federation inbox).",
    "403": "Authenticated, but not allowed.",
    "404": "No such object.",
    "409": "The object's state does not allow this (e.g. already final), or the hub is halted.",
    "413": "The body is too large.",
    "429": "Over a limit (concurrent agents, a peer's quota).",
    "502": "A peer hub did not answer, or not with a valid signed answer.",
}
_GET_ERRORS = ("400", "401", "403", "404")


class ViewScopedAutoSchema(AutoSchema):
    def get_serializer_name(self, serializer: Serializer[Any], direction: Direction) -> str:
        serializer_class = type(serializer)
        owner, _, name = serializer_class.__qualname__.rpartition(".")
        if not owner or "<locals>" in owner:
            return super().get_serializer_name(serializer, direction)
        view_name = owner.split(".")[-1].removesuffix("Api").removesuffix("View")
        return f"{view_name}{name.removesuffix('Serializer')}"

    def _get_response_bodies(self, direction: Direction = "response") -> dict[str, Any]:
        # Errors are part of the contract: document the one error body for
        # every status a view may answer with, so clients (and the schemathesis
        # run in tests/reliability) can rely on it.
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        # drf-spectacular leaves ResolvedComponent.__init__ unannotated.
        component = ResolvedComponent(  # type: ignore[no-untyped-call]
            name="Error", type=ResolvedComponent.SCHEMA, object="Error", schema=ERROR_SCHEMA
        )
        self.registry.register_on_missing(component)
        statuses = _GET_ERRORS if self.method == "GET" else tuple(ERROR_STATUSES)
        for status in statuses:
            responses.setdefault(
                status,
                {
                    "content": {"application/json": {"schema": component.ref}},
                    "description": ERROR_STATUSES[status],
                },
            )
        return responses

    def _get_paginator(self) -> BasePagination | None:
        # List views nest their paginator as ``Pagination`` (house style), where
        # drf-spectacular only looks for ``pagination_class``; without this the
        # schema promised a bare array for answers that are {count, next, previous, results}.
        # drf-spectacular leaves _get_paginator unannotated.
        paginator: BasePagination | None = super()._get_paginator()  # type: ignore[no-untyped-call]
        pagination = getattr(self.view, "Pagination", None)
        if paginator is None and pagination is not None and self.method == "GET":
            nested: BasePagination = pagination()
            return nested
        return paginator


# drf-spectacular's OpenApiGeneratorExtension.__init_subclass__ (which
# registers the extension) is unannotated.
class FederationSignatureScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """Federation inbox requests are signed per RFC 9421 (docs/federation.md)."""

    target_class = "federation.authentication.FederationSignatureAuthentication"
    name = "federationSignature"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Signature",
            "description": "RFC 9421 HTTP Message Signature (ed25519, label sig1) with "
            "Signature-Input and Content-Digest; see docs/federation.md.",
        }


class FederationConnectScheme(FederationSignatureScheme):  # type: ignore[no-untyped-call]
    target_class = "federation.authentication.FederationConnectAuthentication"
    name = "federationConnectSignature"


class MetricsTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """/metrics takes the scraper's ``FLOTILLA_METRICS_TOKEN`` as a bearer token."""

    target_class = "orchestrator_site.metrics.MetricsTokenAuthentication"
    name = "metricsBearer"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer"}


# Answers that name an object, and where in the body its id is: each links to
# every operation on that object (OpenAPI links), so a client, and the
# schemathesis state machine in the tests, can follow an id from the request
# that made or listed it to the requests that act on it.
_LINK_SOURCES: dict[tuple[str, str, str], dict[str, str]] = {
    ("/api/v1/agents", "post", "202"): {"agent_id": "$response.body#/agent_id"},
    ("/api/v1/agents", "get", "200"): {"agent_id": "$response.body#/results/0/id"},
    ("/api/v1/agents/{agent_id}", "get", "200"): {"agent_id": "$response.body#/id"},
    ("/api/v1/projects", "post", "201"): {
        "project_id": "$response.body#/id",
        "key": "$response.body#/tasks/0/key",
    },
    ("/api/v1/projects", "get", "200"): {"project_id": "$response.body#/results/0/id"},
    ("/api/v1/projects/{project_id}", "get", "200"): {
        "project_id": "$response.body#/id",
        "key": "$response.body#/tasks/0/key",
    },
    ("/api/v1/peers/connect", "post", "201"): {"peer_id": "$response.body#/id"},
    ("/api/v1/peers", "get", "200"): {"peer_id": "$response.body#/results/0/id"},
}


def add_object_links(
    result: dict[str, Any], generator: SchemaGenerator, request: Request | None, public: bool
) -> dict[str, Any]:
    """drf-spectacular post-processing hook: the links of ``_LINK_SOURCES``."""
    operations = [
        (path, method, operation)
        for path, methods in result.get("paths", {}).items()
        for method, operation in methods.items()
    ]
    for (path, method, status), expressions in _LINK_SOURCES.items():
        response = result["paths"].get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        links = response.setdefault("links", {})
        for target_path, target_method, target in operations:
            names = {p["name"] for p in target.get("parameters", []) if p["in"] == "path"}
            if not names or not names <= expressions.keys():
                continue
            if (target_path, target_method) == (path, method):
                continue
            links[target["operationId"]] = {
                "operationId": target["operationId"],
                "parameters": {name: expressions[name] for name in sorted(names)},
            }
    return result
