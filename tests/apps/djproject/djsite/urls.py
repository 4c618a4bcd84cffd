from django.db import connection
from django.http import JsonResponse
from django.urls import path


def hello(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        one = cursor.fetchone()[0]
    return JsonResponse({"hello": "django", "db": one})


def visits(request):
    from djsite.models import Visit

    Visit.objects.create(path=request.path)
    return JsonResponse({"visits": Visit.objects.count()})


urlpatterns = [path("", hello), path("visits", visits)]
