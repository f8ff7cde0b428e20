from django.urls import path

from . import views

app_name = "images"

urlpatterns = [
    path("", views.image_list, name="image_list"),
    path("pull/", views.image_pull, name="image_pull"),
    path("remove/<path:name>", views.image_remove, name="image_remove"),
    path("<str:name>/", views.image_detail, name="image_detail"),
    path("<str:name>/tag/", views.image_tag, name="image_tag"),
]
