"""URL routes of the demo project."""

from __future__ import annotations

from django.urls import path
from genesys_demo import views

urlpatterns = [path("org/", views.organization, name="organization")]
