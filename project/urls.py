"""Berth's URLs: the UI, the admin, accounts, and the Docker Engine API."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from . import api, views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/tokens/", views.token_list, name="token_list"),
    path("accounts/tokens/<int:pk>/revoke/", views.token_revoke, name="token_revoke"),
    path("admin/", admin.site.urls),
    path("api/jobs/", api.job_list, name="api_job_list"),
    path("api/jobs/<int:pk>/", api.job_detail, name="api_job_detail"),
    path("jobs/", views.job_list, name="job_list"),
    path("jobs/<int:pk>/", views.job_detail, name="job_detail"),
    path("jobs/<int:pk>/cancel/", views.job_cancel, name="job_cancel"),
    path("jobs/<int:pk>/download", views.job_download, name="job_download"),
    path("images/", include("images.urls")),
    path("containers/", include("containers.urls")),
    path("networks/", include("containers.urls_networks")),
    # The Docker Engine API: versioned, and unversioned for the first calls of a client.
    re_path(r"^v(?P<version>\d+\.\d+)/", include("project.dockerapi.urls")),
    path("", include("project.dockerapi.urls", namespace="docker-unversioned")),
]
