"""Pages of the images app."""

from django.shortcuts import render


def image_list(request):
    """The images on this node."""
    return render(request, "images/image_list.html", {"images": []})
