"""A minimal Django project for the benchmarks: the default middleware a project has.

With BENCH_DB=postgres the `db` scenario's views read and write the local PostgreSQL
(127.0.0.1:5432, trust auth, database hurricane_bench, made by bench/run.py) with psycopg 3;
BENCH_CONN_MAX_AGE is Django's CONN_MAX_AGE (600: persistent connections; 0, Django's default: a
new connection per request). BENCH_PG_DRIVER=psycopg2 makes Django use psycopg2 instead (it takes
psycopg 3 whenever that imports)."""

import os
import sys

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "benchsite.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "benchsite"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
DATABASES = {}
if os.environ.get("BENCH_DB") == "postgres":
    if os.environ.get("BENCH_PG_DRIVER") == "psycopg2":
        sys.modules["psycopg"] = None  # type: ignore[assignment]  # Django's backend then imports psycopg2
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "hurricane_bench",
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "5432",
        "CONN_MAX_AGE": int(os.environ.get("BENCH_CONN_MAX_AGE", "600")),
    }
USE_TZ = True
