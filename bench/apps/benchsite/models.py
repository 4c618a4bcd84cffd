from django.db import models


class Item(models.Model):
    """The rows the `db` scenario's read view returns (bench/run.py creates the table)."""

    name = models.CharField(max_length=100)
    price = models.IntegerField()

    class Meta:
        app_label = "benchsite"
        db_table = "bench_item"
        managed = False


class Visit(models.Model):
    """One row per request of the write view."""

    path = models.CharField(max_length=100)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "benchsite"
        db_table = "bench_visit"
        managed = False
