from django.http import JsonResponse
from django.urls import path


def hello(request):
    return JsonResponse({"message": "Hello, world!"})


async def ahello(request):
    return JsonResponse({"message": "Hello, world!"})


def db_read(request):
    from benchsite.models import Item

    return JsonResponse({"items": list(Item.objects.order_by("id").values("id", "name", "price")[:10])})


def db_write(request):
    from benchsite.models import Visit

    visit = Visit.objects.create(path=request.path)
    return JsonResponse({"id": visit.id})


urlpatterns = [path("json", hello), path("ajson", ahello), path("db/read", db_read), path("db/write", db_write)]
