"""Forms of the images app."""

from django import forms

from runtime.errors import InvalidArgument
from runtime.reference import parse_reference


class ReferenceField(forms.CharField):
    """An image reference, checked with Docker's grammar (the message says what is wrong)."""

    def clean(self, value):
        value = super().clean(value).strip()
        try:
            parse_reference(value)
        except InvalidArgument as e:
            raise forms.ValidationError(str(e)) from None
        return value


class PullForm(forms.Form):
    reference = ReferenceField(max_length=512, label="Image",
                               widget=forms.TextInput(attrs={"placeholder": "busybox:latest or 127.0.0.1:5000/team/app:v2"}))


class TagForm(forms.Form):
    target = ReferenceField(max_length=512, label="New name",
                            widget=forms.TextInput(attrs={"placeholder": "myrepo/app:v1"}))


class RegistryForm(forms.Form):
    host = forms.CharField(max_length=255, widget=forms.TextInput(attrs={"placeholder": "127.0.0.1:5000"}))
    username = forms.CharField(max_length=255, required=False)
    password = forms.CharField(max_length=1024, required=False, widget=forms.PasswordInput)
    insecure = forms.BooleanField(required=False, label="Plain HTTP")


class ImportForm(forms.Form):
    archive = forms.FileField(label="Root filesystem tar", help_text="plain, gzip, zstd, xz or bzip2")
    reference = ReferenceField(max_length=512, required=False, label="Name",
                               widget=forms.TextInput(attrs={"placeholder": "myimage:v1 (optional)"}))
    changes = forms.CharField(required=False, label="Changes (one per line)",
                              widget=forms.Textarea(attrs={"rows": 2, "placeholder": 'CMD ["sh"]\nENV A=b'}))
    message = forms.CharField(max_length=500, required=False)

    def clean_changes(self):
        return [line.strip() for line in self.cleaned_data["changes"].splitlines() if line.strip()]


class LoadForm(forms.Form):
    archive = forms.FileField(label="Image archive", help_text="from docker save, or an OCI image layout tar")


class SearchForm(forms.Form):
    term = forms.CharField(max_length=255, label="Search",
                           widget=forms.TextInput(attrs={"placeholder": "busybox, or 127.0.0.1:5000/team"}))


class BuildForm(forms.Form):
    """``docker build``: a Dockerfile typed here, and/or a context tar (its Dockerfile is used if none is typed)."""

    dockerfile_text = forms.CharField(required=False, label="Dockerfile",
                                      widget=forms.Textarea(attrs={"rows": 14, "spellcheck": "false",
                                                                   "placeholder": "FROM busybox\nRUN echo hello"}))
    context = forms.FileField(required=False, label="Context (a tar archive, or a folder packed by the page)")
    dockerfile = forms.CharField(max_length=255, required=False, initial="Dockerfile", label="Dockerfile path in the context")
    tags = forms.CharField(max_length=1024, required=False, help_text="-t, space separated: app:v1 app:latest")
    build_args = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}), label="Build args",
                                 help_text="KEY=value, one per line")
    target = forms.CharField(max_length=255, required=False)
    no_cache = forms.BooleanField(required=False, label="--no-cache")

    def clean(self):
        data = super().clean()
        if not data.get("dockerfile_text") and not data.get("context"):
            raise forms.ValidationError("write a Dockerfile or upload a context")
        for tag in (data.get("tags") or "").split():
            try:
                parse_reference(tag)
            except InvalidArgument as e:
                raise forms.ValidationError(f"invalid tag {tag}: {e}") from None
        args = {}
        for line in (data.get("build_args") or "").splitlines():
            if line.strip():
                key, sep, value = line.strip().partition("=")
                if not sep or not key:
                    raise forms.ValidationError(f"invalid build arg {line!r}: use KEY=value")
                args[key] = value
        data["build_args_dict"] = args
        return data
