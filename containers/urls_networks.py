from django.urls import path

from . import views

app_name = "networks"

urlpatterns = [
    path("", views.network_list, name="network_list"),
    path("<str:name>/", views.network_detail, name="network_detail"),
    path("<str:name>/remove/", views.network_remove, name="network_remove"),
]
