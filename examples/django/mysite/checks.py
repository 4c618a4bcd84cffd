"""A custom check tagged `readiness`: /ready fails while it reports an error."""

from django.core.checks import Error, register


@register("readiness")
def templates_present(app_configs, **kwargs):
    from django.template import TemplateDoesNotExist
    from django.template.loader import get_template

    try:
        get_template("index.html")
    except TemplateDoesNotExist:
        return [Error("index.html is missing", id="mysite.E001")]
    return []
