from django.urls import path

from dashboard import consumers

websocket_urlpatterns = [
    path("ws/dashboard/agents/", consumers.AgentBoardConsumer.as_asgi()),
    path("ws/dashboard/agents/<str:agent_id>/", consumers.AgentDetailConsumer.as_asgi()),
    path("ws/dashboard/projects/", consumers.ProjectBoardConsumer.as_asgi()),
    path("ws/dashboard/projects/<int:project_id>/", consumers.ProjectDetailConsumer.as_asgi()),
    path("ws/dashboard/hub/", consumers.HubConsumer.as_asgi()),
]
