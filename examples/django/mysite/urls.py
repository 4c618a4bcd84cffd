from django.urls import path

from mysite import views

urlpatterns = [path("", views.index), path("api", views.api), path("api/async", views.api_async)]
