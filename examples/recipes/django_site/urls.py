import logging

from django.http import HttpRequest, HttpResponse
from django.urls import path

log = logging.getLogger(__name__)


def order(request: HttpRequest, order: str) -> HttpResponse:
    log.info("order %s received", order)
    return HttpResponse(f"order {order}: done\n")


urlpatterns = [path("order/<order>", order)]
