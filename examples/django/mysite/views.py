import asyncio

from django.db import connection
from django.http import JsonResponse
from django.shortcuts import render


def index(request):
    return render(request, "index.html", {"server": request.META.get("SERVER_SOFTWARE", "")})


def api(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        (one,) = cursor.fetchone()
    return JsonResponse({"message": "Hello from Django under hurricane", "database": one == 1})


async def api_async(request):
    """An ``async def`` view: under ``manage.py serve --asgi`` it runs on the worker's event loop."""
    await asyncio.sleep(0)
    loop = type(asyncio.get_running_loop())
    return JsonResponse({"message": "Hello from an async Django view under hurricane",
                         "loop": f"{loop.__module__}.{loop.__name__}"})
