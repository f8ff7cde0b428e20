"""Forms of the containers app: the run form has every option of ``docker run`` this issue covers."""

from django import forms

from runtime.errors import InvalidArgument

from . import runoptions
from .choices import RestartPolicyChoices


class RunForm(forms.Form):
    """``docker run``: validated with the same code as the Docker API's create (runoptions)."""

    image = forms.CharField(max_length=512, initial="busybox:latest")
    name = forms.CharField(max_length=255, required=False, help_text="--name (a random one when empty)")
    command = forms.CharField(max_length=4096, required=False, help_text="Shell words, e.g. sleep 300")
    entrypoint = forms.CharField(max_length=4096, required=False)
    env = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}), help_text="-e KEY=value, one per line")
    volumes = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}),
                              help_text="-v /host:/ctr[:ro] or name:/ctr, one per line")
    ports = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}),
                            help_text="-p [ip:]host:ctr[/udp], one per line (published by the networks feature)")
    workdir = forms.CharField(max_length=1024, required=False, label="Working dir")
    user = forms.CharField(max_length=255, required=False, help_text="-u name or uid[:gid]")
    hostname = forms.CharField(max_length=255, required=False)
    restart = forms.ChoiceField(choices=RestartPolicyChoices.choices, initial="no")
    restart_retries = forms.IntegerField(min_value=0, required=False, label="On-failure retries")
    memory = forms.CharField(max_length=32, required=False, help_text="e.g. 256m")
    cpus = forms.DecimalField(min_value=0, max_digits=6, decimal_places=2, required=False)
    pids_limit = forms.IntegerField(min_value=0, required=False)
    cap_add = forms.CharField(max_length=1024, required=False, help_text="e.g. NET_ADMIN SYS_TIME")
    cap_drop = forms.CharField(max_length=1024, required=False, help_text="e.g. ALL")
    network = forms.CharField(max_length=255, initial="bridge", help_text="bridge, none, host, or a network's name",
                              widget=forms.TextInput(attrs={"list": "networks"}))
    ip = forms.GenericIPAddressField(protocol="IPv4", required=False, label="IP address",
                                     help_text="--ip, on a user-defined network")
    network_aliases = forms.CharField(max_length=1024, required=False, label="Network aliases",
                                      help_text="--network-alias, space separated (user-defined networks)")
    publish_all = forms.BooleanField(required=False, label="-P (publish every exposed port)")
    extra_hosts = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}),
                                  help_text="--add-host name:ip, one per line")
    dns = forms.CharField(max_length=1024, required=False, help_text="--dns servers, space separated")
    dns_search = forms.CharField(max_length=1024, required=False, label="DNS search",
                                 help_text="--dns-search domains, space separated")
    links = forms.CharField(max_length=1024, required=False, help_text="--link name:alias, space separated")
    read_only = forms.BooleanField(required=False, label="Read-only root filesystem")
    tty = forms.BooleanField(required=False, label="-t (TTY)")
    interactive = forms.BooleanField(required=False, label="-i (keep stdin open)")
    auto_remove = forms.BooleanField(required=False, label="--rm")
    start = forms.BooleanField(required=False, initial=True, label="Start it now (-d)")

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        data = dict(data)
        restart = data.get("restart") or "no"
        if restart == "on-failure" and data.get("restart_retries"):
            restart += f":{data['restart_retries']}"
        data["restart"] = restart
        data["cpus"] = str(data.get("cpus") or "")
        data["pids_limit"] = data.get("pids_limit") or 0
        try:
            self.config = runoptions.from_form(data)
        except (InvalidArgument, ValueError) as e:
            raise forms.ValidationError(str(e)) from None
        return data


class CommitForm(forms.Form):
    reference = forms.CharField(max_length=512, required=False, label="Repository[:tag]")
    message = forms.CharField(max_length=1000, required=False)
    author = forms.CharField(max_length=255, required=False)
    changes = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}), help_text='e.g. CMD ["sh"]')


class RenameForm(forms.Form):
    name = forms.CharField(max_length=255)

    def clean_name(self):
        try:
            return runoptions.check_name(self.cleaned_data["name"])
        except InvalidArgument as e:
            raise forms.ValidationError(str(e)) from None


class ExecForm(forms.Form):
    """``docker exec`` of one command without a TTY (the terminal has the interactive kind)."""

    command = forms.CharField(max_length=4096)
    user = forms.CharField(max_length=255, required=False)
    workdir = forms.CharField(max_length=1024, required=False, label="Working dir")

    def clean_command(self):
        import shlex

        try:
            words = shlex.split(self.cleaned_data["command"])
        except ValueError as e:
            raise forms.ValidationError(f"cannot split the command: {e}") from None
        if not words:
            raise forms.ValidationError("the command is empty")
        return words


class NetworkForm(forms.Form):
    """``docker network create``."""

    name = forms.CharField(max_length=255)
    subnet = forms.CharField(max_length=64, required=False, help_text="e.g. 10.91.0.0/24 (chosen when empty)")
    gateway = forms.CharField(max_length=64, required=False)
    internal = forms.BooleanField(required=False, help_text="no route out of the network")
