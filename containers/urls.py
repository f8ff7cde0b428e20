from django.urls import path

from . import views

app_name = "containers"

urlpatterns = [
    path("", views.container_list, name="container_list"),
    path("run/", views.container_run, name="container_run"),
    path("<str:name>/", views.container_detail, name="container_detail"),
    path("<str:name>/remove/", views.container_remove, name="container_remove"),
    path("<str:name>/rename/", views.container_rename, name="container_rename"),
    path("<str:name>/commit/", views.container_commit, name="container_commit"),
    path("<str:name>/download/", views.container_download, name="container_download"),
    path("<str:name>/upload/", views.container_upload, name="container_upload"),
    path("<str:name>/exec/", views.container_exec, name="container_exec"),
    path("<str:name>/terminal/", views.container_terminal, name="container_terminal"),
    path("<str:name>/<str:action>/", views.container_action, name="container_action"),
]
