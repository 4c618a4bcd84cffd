from django.apps import AppConfig


class DjsiteConfig(AppConfig):
    name = "djsite"

    def ready(self) -> None:
        from djsite import checks  # noqa: F401 - registers the tagged checks
