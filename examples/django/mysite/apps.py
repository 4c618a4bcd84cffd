from django.apps import AppConfig


class MysiteConfig(AppConfig):
    name = "mysite"

    def ready(self) -> None:
        from mysite import checks  # noqa: F401 - registers the readiness check
