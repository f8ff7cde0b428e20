"""Pages of the containers app."""

from django.shortcuts import render


def container_list(request):
    """The containers on this node (``docker ps -a``)."""
    return render(request, "containers/container_list.html", {"containers": []})
