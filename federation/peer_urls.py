"""The staff peers API, mounted under /api/v1/."""

from django.urls import path

from federation.apis import PeerAgentSpawnApi, PeerConnectApi, PeerListApi, peer_action_views

urlpatterns = [
    path("peers", PeerListApi.as_view(), name="peers-list"),
    path("peers/connect", PeerConnectApi.as_view(), name="peers-connect"),
    path("peers/<uuid:peer_id>/agents", PeerAgentSpawnApi.as_view(), name="peers-agents"),
    *[
        path(f"peers/<uuid:peer_id>/{action}", view.as_view(), name=f"peers-{action}")
        for action, view in peer_action_views().items()
    ],
]
