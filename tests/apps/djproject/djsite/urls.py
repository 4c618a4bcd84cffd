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


async def async_hello(request):
    # An async view under ASGI runs on the worker's event loop.
    import asyncio

    await asyncio.sleep(0)
    return JsonResponse({"hello": "async django"})


urlpatterns = [path("", hello), path("visits", visits), path("async", async_hello)]
