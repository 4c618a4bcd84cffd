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
