"""Dashboard pages and the operator's POST actions (kill, kill-all, halt, release).

Pages are server-rendered and then kept current by ``static/dashboard/*.js``
over the WebSocket streams in ``consumers.py``. Every POST needs the session,
Django's CSRF token and, for hub-wide actions, a staff account; the
kill-switch services do the work and the audit.
"""

from collections.abc import Callable, Mapping
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from agents.errors import AgentError, AgentNotFound
from agents.models import AgentState, AgentType, NetworkMode, Runtime
from agents.selectors import (
    agent_facets,
    agent_get,
    agent_patch_attempts,
    agent_visible_get,
    agents_visible_to,
    spawn_choices,
    viewer_owner,
    viewer_principal,
)
from dashboard.agent_report import (
    RETRY_STATES,
    agent_gate_rows,
    agent_network,
    agent_retry_offer,
    agent_usage,
    agent_usage_series,
)
from dashboard.charts import activity_charts
from dashboard.diffs import agent_diff_page, kept_patch_page
from dashboard.forms import agent_filters
from dashboard.selectors import (
    agent_retry_links,
    agent_summary,
    board_agents,
    board_peers,
    board_projects,
    hub_banners,
    hub_footer,
    project_page,
)
from dashboard.task_yaml import TasksYamlInvalid, tasks_yaml_read
from federation.errors import FederationError
from federation.services import peer_transition
from killswitch.services import agent_kill, agent_kill_all, hub_halt, hub_release
from taskqueue.errors import ProjectError, ProjectNotFound
from taskqueue.models import FailurePolicy, ProjectMode
from taskqueue.selectors import project_visible_get
from taskqueue.services import project_cancel, project_pause, project_resume

MAX_REASON = 2000
# The profiles the spawn form offers; the API's serializer decides what is valid.
GATE_PROFILES = ("standard", "minimal", "strict")
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
    return viewer_principal(request.user)


def page_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    return {
        "banners": hub_banners(),
        "footer": hub_footer(),
        "is_staff": request.user.is_staff,
        "dashboard_peers": True,
        "dashboard_projects": True,
        **extra,
    }


@require_GET
@dashboard_page
def agents_board(request: HttpRequest) -> HttpResponse:
    filters = agent_filters(request.GET, is_staff=request.user.is_staff)
    board = board_agents(owner=viewer_owner(request.user), filters=filters)
    # New agents are added live only where they would be listed: the first
    # page, and no owner filter (the live summaries do not say who asked).
    live_insert = board["page"].number == 1 and not filters["owner"]
    query = request.GET.copy()
    query.pop("page", None)
    context = page_context(
        request,
        **board,
        filters=filters,
        filtered=any(value for name, value in filters.items() if name != "page"),
        live_insert=live_insert,
        page_query=query.urlencode(),
        states=AgentState.values,
        runtimes=Runtime.values,
        nav="agents",
    )
    return render(request, "dashboard/agents.html", context)


def _agent_missing(request: HttpRequest) -> HttpResponse:
    """Someone else's agent, or none: the same 404, so its id does not leak."""
    return render(request, "dashboard/not_found.html", page_context(request), status=404)


@require_GET
@dashboard_page
def agent_detail(request: HttpRequest, agent_id: str) -> HttpResponse:
    try:
        agent = agent_visible_get(viewer=request.user, agent_id=agent_id)
    except AgentNotFound:
        return _agent_missing(request)
    context = page_context(
        request,
        agent=agent_summary(agent),
        usage=agent_usage(agent),
        usage_series=agent_usage_series(agent),
        gates=agent_gate_rows(agent=agent),
        gate_verdict=(agent.result or {}).get("gates"),
        network=agent_network(agent=agent),
        pushed_commit=(agent.result or {}).get("pushed_commit"),
        kept_patches=agent_patch_attempts(agent=agent),
        retry_offer=agent_retry_offer(agent),
        retry_states=RETRY_STATES,
        retry_links=agent_retry_links(agents=agents_visible_to(request.user), agent=agent),
        nav="agents",
    )
    return render(request, "dashboard/agent_detail.html", context)


@require_GET
@dashboard_page
def agent_diff(request: HttpRequest, agent_id: str) -> HttpResponse:
    """The agent's branch against its base, a page of files at a time (``?page=``)."""
    try:
        agent = agent_visible_get(viewer=request.user, agent_id=agent_id)
    except AgentNotFound:
        return _agent_missing(request)
    kept = agent_patch_attempts(agent=agent)
    attempt = _attempt_asked(request, default=agent.attempt if agent.is_final else None)
    page = request.GET.get("page")
    if attempt in kept:
        # The work the hub kept when an attempt ended without a push (a rejected change).
        diff = kept_patch_page(agent=agent, attempt=attempt, page_number=page)
    else:
        attempt = None
        diff = agent_diff_page(agent=agent, page_number=page)
    context = page_context(
        request,
        agent=agent_summary(agent),
        diff=diff,
        kept_patches=kept,
        kept_attempt=attempt,
        nav="agents",
    )
    return render(request, "dashboard/agent_diff.html", context)


def _attempt_asked(request: HttpRequest, *, default: int | None) -> int | None:
    """``?attempt=N`` as a number, or ``default`` when it is absent or not one."""
    value = request.GET.get("attempt", "")
    return int(value) if value.isdigit() and len(value) < 6 else default


@require_GET
@dashboard_page
def agent_new(request: HttpRequest) -> HttpResponse:
    """The spawn form. It posts to ``POST /api/v1/agents`` (session and CSRF token), so it
    goes through exactly the API's validation, and shows the API's field errors."""
    facets = agent_facets(agents=agents_visible_to(request.user), limit=50)
    context = page_context(
        request,
        choices=spawn_choices(),
        agent_types=AgentType.values,
        network_modes=NetworkMode.values,
        gate_profiles=GATE_PROFILES,
        repositories=facets["repository"],
        nav="new",
    )
    return render(request, "dashboard/agent_new.html", context)


@require_GET
@dashboard_page
def activity(request: HttpRequest) -> HttpResponse:
    charts = activity_charts(owner=viewer_owner(request.user))
    return render(
        request, "dashboard/activity.html", page_context(request, **charts, nav="activity")
    )


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
        agent = agent_visible_get(viewer=request.user, agent_id=agent_id)
        termination = agent_kill(agent_id=agent.id, reason=reason, actor=actor(request))
        state = agent_get(agent_id=agent.id).state
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


def _hub_action_done(request: HttpRequest, body: Mapping[str, Any], message: str) -> HttpResponse:
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
    context = page_context(
        request, projects=board_projects(owner=viewer_owner(request.user)), nav="projects"
    )
    return render(request, "dashboard/projects.html", context)


@require_GET
@dashboard_page
def project_new(request: HttpRequest) -> HttpResponse:
    """The project form. It posts to ``POST /api/v1/projects`` (session and CSRF token),
    so the API's validation decides; the page draws the graph and names a cycle first."""
    facets = agent_facets(agents=agents_visible_to(request.user), limit=50)
    context = page_context(
        request,
        modes=ProjectMode.values,
        failure_policies=FailurePolicy.values,
        repositories=facets["repository"],
        nav="projects",
    )
    return render(request, "dashboard/project_new.html", context)


@require_POST
@dashboard_page
def project_tasks_yaml(request: HttpRequest) -> HttpResponse:
    """The project form's pasted YAML (form field ``text``) read on the hub: ``{value}``,
    or 400 with the error envelope saying what is wrong and where."""
    try:
        value = tasks_yaml_read(request.POST.get("text", ""))
    except TasksYamlInvalid as error:
        message = str(error)
        return JsonResponse(
            {"error": {"code": "invalid_yaml", "message": message, "fields": {"text": [message]}}},
            status=400,
        )
    return JsonResponse({"value": value})


def _project_missing(request: HttpRequest) -> HttpResponse:
    """Someone else's project, or none: the same 404, so its id does not leak."""
    if _wants_json(request):
        return JsonResponse(
            {"error": {"code": "not_found", "message": "no such project"}}, status=404
        )
    context = page_context(request, missing="project", nav="projects")
    return render(request, "dashboard/not_found.html", context, status=404)


@require_GET
@dashboard_page
def project_detail(request: HttpRequest, project_id: int) -> HttpResponse:
    try:
        project = project_visible_get(viewer=request.user, project_id=project_id)
    except ProjectNotFound:
        return _project_missing(request)
    page = project_page(project=project)
    # Whoever may see a project (staff, its creator) may also control it.
    context = page_context(request, **page, may_control=True, nav="projects")
    return render(request, "dashboard/project_detail.html", context)


# What the project page offers, to whoever may see the project (project_visible_get).
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
        project = project_visible_get(viewer=request.user, project_id=project_id)
    except ProjectNotFound:
        return _project_missing(request)
    try:
        project = _project_control(
            action, project_id=project.id, actor=actor(request), reason=_reason(request)
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
