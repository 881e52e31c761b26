"""The one place where errors become JSON: ``{"error": {"code", "message", "fields"}}``."""

import logging
from typing import Any, NotRequired, TypedDict

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import DatabaseError, DataError, ProgrammingError
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)


class ErrorDetail(TypedDict):
    code: str
    message: str
    fields: NotRequired[dict[str, list[str]]]


class ErrorBody(TypedDict):
    error: ErrorDetail


def error_body(code: str, message: str, fields: dict[str, list[str]] | None = None) -> ErrorBody:
    error: ErrorDetail = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error}


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    if isinstance(detail, dict):
        flat: dict[str, list[str]] = {}
        for key, value in detail.items():
            name = "non_field_errors" if key == "non_field_errors" and not prefix else key
            flat.update(_flatten(value, f"{prefix}.{name}" if prefix else str(name)))
        return flat
    if isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            return {prefix or "non_field_errors": [str(item) for item in detail]}
        flat = {}
        for index, item in enumerate(detail):
            flat.update(_flatten(item, f"{prefix}[{index}]"))
        return flat
    return {prefix or "non_field_errors": [str(detail)]}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    if hasattr(exc, "http_status") and hasattr(exc, "code"):
        body = error_body(exc.code, str(exc), getattr(exc, "fields", None))
        # A refusal that says when to come back (a rate) says it in Retry-After.
        retry_after = getattr(exc, "retry_after", None)
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        return Response(body, status=exc.http_status, headers=headers)
    if isinstance(exc, RequestDataTooBig):
        # Django refuses to read a body past DATA_UPLOAD_MAX_MEMORY_SIZE.
        body = error_body("too_large", "The request body is too large.")
        return Response(body, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, SuspiciousOperation):
        body = error_body("invalid", "The request is not valid.")
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DatabaseError) and not isinstance(exc, ProgrammingError | DataError):
        # The database is restarting or unreachable: the request may be
        # retried as it is, which a 503 says and a 500 would not.
        logger.warning("database unavailable in %s: %s", context.get("view"), exc)
        body = error_body("unavailable", "The hub's database is unavailable; retry shortly.")
        return Response(
            body, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "1"}
        )
    response = exception_handler(exc, context)
    if response is None:
        logger.exception("unhandled error in %s", context.get("view"), exc_info=exc)
        body = error_body("internal_error", "The hub hit an unexpected error; it was logged.")
        return Response(body, status=status.HTTP_500_INTERNAL_SERVER_ERROR)
    if isinstance(exc, exceptions.ValidationError):
        response.data = error_body("invalid", "The request is not valid.", _flatten(exc.detail))
    elif isinstance(exc, exceptions.APIException):
        detail = exc.detail
        message = str(detail) if not isinstance(detail, dict | list) else "Request refused."
        code = exc.get_codes()
        response.data = error_body(code if isinstance(code, str) else exc.default_code, message)
    return response


def _is_machine_path(path: str) -> bool:
    return path.startswith(("/api/", "/federation/"))


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_machine_path(request.path):
        return JsonResponse(
            error_body("not_found", f"No such endpoint: {request.path}"), status=404
        )
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if _is_machine_path(request.path):
        body = error_body("internal_error", "The hub hit an unexpected error; it was logged.")
        return JsonResponse(body, status=500)
    from django.views.defaults import server_error as html_server_error

    return html_server_error(request)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_machine_path(request.path):
        return JsonResponse(error_body("bad_request", "The request is malformed."), status=400)
    from django.views.defaults import bad_request as html_bad_request

    return html_bad_request(request, exception)
