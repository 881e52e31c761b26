"""The agents page's filters, read from the query string.

A value that is not valid (an unknown state, a page past the end) is
dropped rather than refused: a filter link that went stale still shows a
page.
"""

from typing import Any

from django import forms

from agents.models import AgentState, Runtime


def _any(choices: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [("", "any"), *choices]


class AgentFilterForm(forms.Form):
    state = forms.ChoiceField(choices=_any(AgentState.choices), required=False)
    runtime = forms.ChoiceField(choices=_any(Runtime.choices), required=False)
    repository = forms.CharField(max_length=1000, required=False)
    owner = forms.CharField(max_length=200, required=False)
    origin = forms.CharField(max_length=200, required=False)
    task = forms.CharField(max_length=100, required=False, strip=True)
    page = forms.IntegerField(min_value=1, max_value=1_000_000, required=False)


def agent_filters(query: Any, *, is_staff: bool) -> dict[str, Any]:
    """The valid filters in ``query`` (a QueryDict); ``owner`` only for staff."""
    form = AgentFilterForm(query)
    form.is_valid()
    filters = {name: form.cleaned_data.get(name) or "" for name in form.fields if name != "page"}
    if not is_staff:
        filters["owner"] = ""
    filters["page"] = form.cleaned_data.get("page") or 1
    return filters
