from django.urls import path, re_path

from containers import consumers as container_consumers

from . import consumers

websocket_urlpatterns = [
    path("ws/events", consumers.EventsConsumer.as_asgi()),
    path("ws/jobs/<int:pk>", consumers.JobConsumer.as_asgi()),
    path("ws/containers/<str:container_id>/logs", container_consumers.ContainerLogsConsumer.as_asgi()),
    path("ws/containers/<str:container_id>/stats", container_consumers.ContainerStatsConsumer.as_asgi()),
    path("ws/containers/<str:container_id>/exec", container_consumers.TerminalConsumer.as_asgi()),
    path("ws/containers/<str:container_id>/attach", container_consumers.AttachTerminalConsumer.as_asgi()),
    # The Docker API's websocket attach (versioned or not).
    re_path(r"^(?:v\d+\.\d+/)?containers/(?P<container_id>[^/]+)/attach/ws$",
            container_consumers.DockerAttachWebsocketConsumer.as_asgi()),
]
