from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path(f"{view.__name__}/<str:name>", view)
    for view in (
        views.ok,
        views.aview,
        views.bridged,
        views.stream,
        views.astream,
        views.boom,
        views.missing,
        views.gone,
        views.own_header,
        views.cached,
        views.cache_object,
        views.scope_header,
    )
]
