from django.urls import path

from dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.agents_board, name="agents"),
    path("agents/new/", views.agent_new, name="agent-new"),
    path("agents/<str:agent_id>/", views.agent_detail, name="agent"),
    path("agents/<str:agent_id>/diff/", views.agent_diff, name="agent-diff"),
    path("activity/", views.activity, name="activity"),
    path("agents/<str:agent_id>/kill", views.agent_kill_action, name="agent-kill"),
    path("kill-all", views.kill_all_action, name="kill-all"),
    path("halt", views.halt_action, name="halt"),
    path("release", views.release_action, name="release"),
    path("peers/", views.peers_board, name="peers"),
    path("peers/<str:peer_id>/<str:action>", views.peer_action, name="peer-action"),
    path("projects/", views.projects_board, name="projects"),
    path("projects/new/", views.project_new, name="project-new"),
    path("projects/new/yaml", views.project_tasks_yaml, name="project-tasks-yaml"),
    path("projects/<int:project_id>/", views.project_detail, name="project"),
    path("projects/<int:project_id>/<str:action>", views.project_action, name="project-action"),
]
