from django.urls import path

from killswitch import apis

urlpatterns = [
    path("agents/kill-all", apis.AgentKillAllApi.as_view(), name="agents-kill-all"),
    path("agents/<str:agent_id>/kill", apis.AgentKillApi.as_view(), name="agent-kill"),
    path("killswitch/halt", apis.HubHaltApi.as_view(), name="killswitch-halt"),
    path("killswitch/release", apis.HubReleaseApi.as_view(), name="killswitch-release"),
]
