from django.urls import path

from . import views

app_name = "images"

urlpatterns = [
    path("", views.image_list, name="image_list"),
    path("pull/", views.image_pull, name="image_pull"),
    path("search/", views.image_search, name="image_search"),
    path("build/", views.image_build, name="image_build"),
    path("registries/", views.registry_list, name="registry_list"),
    path("registries/<int:pk>/remove/", views.registry_remove, name="registry_remove"),
    path("import/", views.image_import, name="image_import"),
    path("load/", views.image_load, name="image_load"),
    path("remove/<path:name>", views.image_remove, name="image_remove"),
    path("<str:name>/", views.image_detail, name="image_detail"),
    path("<str:name>/tag/", views.image_tag, name="image_tag"),
    path("<str:name>/save/", views.image_save, name="image_save"),
    path("<str:name>/push/", views.image_push, name="image_push"),
]
