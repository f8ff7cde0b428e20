from django.urls import path

from . import views

app_name = "containers"

urlpatterns = [
    path("", views.container_list, name="container_list"),
]
