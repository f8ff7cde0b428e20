"""Forms of the project app."""

from django import forms


class ApiTokenForm(forms.Form):
    """Create an API token."""

    description = forms.CharField(max_length=200, required=False, help_text="What this token is for.")
