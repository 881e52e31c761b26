"""The signed federation inbox, mounted at /federation/v1/ (peer_urls has the staff API)."""

from django.urls import path

from federation.apis import (
    CommandsApi,
    ConnectApi,
    EventsApi,
    IdentityApi,
)

urlpatterns = [
    path("identity", IdentityApi.as_view(), name="federation-identity"),
    path("connect", ConnectApi.as_view(), name="federation-connect"),
    path("commands", CommandsApi.as_view(), name="federation-commands"),
    path("events", EventsApi.as_view(), name="federation-events"),
]
