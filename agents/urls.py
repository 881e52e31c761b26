from django.urls import path

from agents import apis

urlpatterns = [
    path("agents", apis.AgentCollectionApi.as_view(), name="agents"),
    path("agents/<str:agent_id>", apis.AgentDetailApi.as_view(), name="agent-detail"),
    path("agents/<str:agent_id>/events", apis.AgentEventsApi.as_view(), name="agent-events"),
    path("agents/<str:agent_id>/resume", apis.AgentResumeApi.as_view(), name="agent-resume"),
    path("agents/<str:agent_id>/retry", apis.AgentRetryApi.as_view(), name="agent-retry"),
    path("agents/<str:agent_id>/patch", apis.AgentPatchApi.as_view(), name="agent-patch"),
]
