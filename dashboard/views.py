"""Dashboard pages and the operator's POST actions (kill, kill-all, halt, release).

Pages are server-rendered and then kept current by ``static/dashboard/*.js``
over the WebSocket streams in ``consumers.py``. Every POST needs the session,
Django's CSRF token and, for hub-wide actions, a staff account; the
kill-switch services do the work and the audit.
"""

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from agents.errors import AgentError, AgentNotFound
from agents.selectors import agent_get
from dashboard.selectors import (
    agent_summary,
    board_agents,
    board_peers,
    board_projects,
    hub_banners,
    project_page,
)
from federation.errors import FederationError
from federation.services import peer_transition
from killswitch.services import agent_kill, agent_kill_all, hub_halt, hub_release
from taskqueue.errors import ProjectError, ProjectNotFound
from taskqueue.selectors import project_get, project_may_control
from taskqueue.services import project_cancel, project_pause, project_resume

MAX_REASON = 2000
# Our scripts and styles are files under /static/; nothing inline may run.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def dashboard_page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A logged-in page with the hub's banners and a strict content security policy."""

    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response.headers["Content-Security-Policy"] = _CSP
        return response

    return wrapped


def staff_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Hub-wide actions: refused with 403 (not a login redirect) for non-staff users."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_staff:
            raise PermissionDenied("only staff may do this")
        return view(request, *args, **kwargs)

    return wrapped


def actor(request: HttpRequest) -> str:
    return f"user:{request.user.get_username()}"


def page_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    return {
        "banners": hub_banners(),
        "is_staff": request.user.is_staff,
        "dashboard_peers": True,
        "dashboard_projects": True,
        **extra,
    }


@require_GET
@dashboard_page
def agents_board(request: HttpRequest) -> HttpResponse:
    agents, last_event_id = board_agents()
    context = page_context(request, agents=agents, last_event_id=last_event_id, nav="agents")
    return render(request, "dashboard/agents.html", context)


@require_GET
@dashboard_page
def agent_detail(request: HttpRequest, agent_id: str) -> HttpResponse:
    try:
        agent = agent_get(agent_id=agent_id)
    except AgentNotFound:
        return render(request, "dashboard/not_found.html", page_context(request), status=404)
    context = page_context(request, agent=agent_summary(agent), nav="agents")
    return render(request, "dashboard/agent_detail.html", context)


def _reason(request: HttpRequest) -> str:
    return (request.POST.get("reason") or "").strip()[:MAX_REASON]


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


@require_POST
@login_required
def agent_kill_action(request: HttpRequest, agent_id: str) -> HttpResponse:
    reason = _reason(request)
    if not reason:
        return JsonResponse(
            {"error": {"code": "invalid", "message": "a reason is required"}}, status=400
        )
    try:
        termination = agent_kill(agent_id=agent_id, reason=reason, actor=actor(request))
        state = agent_get(agent_id=agent_id).state
    except AgentError as error:
        return JsonResponse(
            {"error": {"code": error.code, "message": str(error)}}, status=error.http_status
        )
    body = {
        "agent_id": termination.agent_id,
        "killed": termination.terminated,
        "state": state,
        "latency_ms": termination.latency_ms,
    }
    return JsonResponse(body, status=200 if termination.terminated else 409)


def _hub_action_done(request: HttpRequest, body: dict[str, Any], message: str) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse(body)
    messages.success(request, message)
    return redirect("dashboard:agents")


def _reason_missing(request: HttpRequest) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse(
            {"error": {"code": "invalid", "message": "a reason is required"}}, status=400
        )
    messages.error(request, "A reason is required.")
    return redirect("dashboard:agents")


@require_POST
@login_required
@staff_only
def kill_all_action(request: HttpRequest) -> HttpResponse:
    reason = _reason(request)
    if not reason:
        return _reason_missing(request)
    summary = agent_kill_all(reason=reason, actor=actor(request))
    return _hub_action_done(
        request, summary, f"Killed {summary['killed']} of {summary['total']} live agents."
    )


@require_POST
@login_required
@staff_only
def halt_action(request: HttpRequest) -> HttpResponse:
    reason = _reason(request)
    if not reason:
        return _reason_missing(request)
    halt = hub_halt(reason=reason, actor=actor(request))
    return _hub_action_done(
        request,
        {"halted": halt.halted, "reason": halt.reason},
        "The hub is halted: no new agent will start.",
    )


@require_POST
@login_required
@staff_only
def release_action(request: HttpRequest) -> HttpResponse:
    halt = hub_release(actor=actor(request), reason=_reason(request))
    return _hub_action_done(request, {"halted": halt.halted}, "The hub is released.")


# Peer actions the dashboard offers; the federation service decides what is allowed.
PEER_ACTIONS = ("accept", "suspend")


@require_GET
@dashboard_page
def peers_board(request: HttpRequest) -> HttpResponse:
    context = page_context(request, peers=board_peers(), nav="peers", peer_actions=PEER_ACTIONS)
    return render(request, "dashboard/peers.html", context)


@require_POST
@login_required
@staff_only
def peer_action(request: HttpRequest, peer_id: str, action: str) -> HttpResponse:
    if action not in PEER_ACTIONS:
        raise PermissionDenied(f"{action} is not a dashboard action")
    try:
        peer = peer_transition(
            peer_id=peer_id, action=action, actor=actor(request), reason=_reason(request)
        )
    except FederationError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, f"Peer {peer.name} is now {peer.state}.")
    return redirect("dashboard:peers")


# --- Projects -------------------------------------------------------------------


@require_GET
@dashboard_page
def projects_board(request: HttpRequest) -> HttpResponse:
    context = page_context(request, projects=board_projects(), nav="projects")
    return render(request, "dashboard/projects.html", context)


@require_GET
@dashboard_page
def project_detail(request: HttpRequest, project_id: int) -> HttpResponse:
    try:
        page = project_page(project_id=project_id)
        may_control = project_may_control(
            project=project_get(project_id=project_id), user=request.user
        )
    except ProjectNotFound:
        context = page_context(request, missing="project", nav="projects")
        return render(request, "dashboard/not_found.html", context, status=404)
    context = page_context(request, **page, may_control=may_control, nav="projects")
    return render(request, "dashboard/project_detail.html", context)


# What the project page offers; taskqueue.selectors.project_may_control says who may.
PROJECT_ACTIONS = ("cancel", "pause", "resume")


def _project_control(action: str, *, project_id: int, actor: str, reason: str) -> Any:
    if action == "cancel":
        return project_cancel(project_id=project_id, actor=actor, reason=reason)
    if action == "pause":
        return project_pause(project_id=project_id, actor=actor)
    return project_resume(project_id=project_id, actor=actor)


@require_POST
@login_required
def project_action(request: HttpRequest, project_id: int, action: str) -> HttpResponse:
    if action not in PROJECT_ACTIONS:
        raise PermissionDenied(f"{action} is not a project action")
    try:
        project = project_get(project_id=project_id)
        if not project_may_control(project=project, user=request.user):
            raise PermissionDenied("only staff and the user who created the project may do this")
        project = _project_control(
            action, project_id=project_id, actor=actor(request), reason=_reason(request)
        )
    except ProjectError as error:
        if _wants_json(request):
            return JsonResponse(
                {"error": {"code": error.code, "message": str(error)}}, status=error.http_status
            )
        messages.error(request, str(error))
        return redirect("dashboard:project", project_id=project_id)
    if _wants_json(request):
        return JsonResponse({"id": project.id, "state": project.state})
    messages.success(request, f"Project {project.name} is now {project.state}.")
    return redirect("dashboard:project", project_id=project_id)
