"""Page forms. They parse what people type; the rules themselves stay in services (and, for
upload metadata, in the API's metadata serializer, so the page and the API accept the same)."""

from __future__ import annotations

import json
import re
from datetime import datetime, time
from typing import TYPE_CHECKING, Any, TypeVar

from django import forms
from django.contrib.auth.forms import AuthenticationForm
from django.utils import timezone

from accounts.permissions import user_capabilities
from core.choices import AuditAction, Capability
from core.errors import InvalidInput
from core.filenames import client_filename_check
from registry.api.serializers import VersionMetadataSerializer
from registry.choices import DatasetRole, Framework, ReviewDecision, VersionState
from registry.services.versions import VersionMetadata

if TYPE_CHECKING:
    from registry.models import RegisteredModel

AUTO_FRAMEWORK = "auto"

_FieldT = TypeVar("_FieldT", bound=forms.Field)


def form_field(form: forms.BaseForm, name: str, kind: type[_FieldT]) -> _FieldT:
    """The form's own copy of field ``name`` as the ``kind`` it is declared as, to set its
    choices or queryset per request (``form.fields`` holds plain ``Field``s to a type checker)."""
    field = form.fields[name]
    if not isinstance(field, kind):
        raise TypeError(f"{type(form).__name__}.{name} is a {type(field).__name__}, not {kind}")
    return field


class LoginForm(AuthenticationForm):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["username"].widget.attrs.update({"autocomplete": "username"})
        self.fields["password"].widget.attrs.update({"autocomplete": "current-password"})


class ModelFilterForm(forms.Form):
    q = forms.CharField(
        label="Search", required=False, max_length=200, help_text="Name, description or tag"
    )
    framework = forms.ChoiceField(
        label="Framework", required=False, choices=[("", "Any framework"), *Framework.choices]
    )
    state = forms.ChoiceField(
        label="Has a version that is",
        required=False,
        choices=[("", "Any state"), *VersionState.choices],
    )
    owner = forms.CharField(label="Owner", required=False, max_length=150)


def _key_value_lines(text: str, *, what: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise forms.ValidationError(
                f"Line {number}: write one {what} per line as key = value, or a JSON object."
            )
        values[key.strip()] = value.strip()
    return values


def _json_or_lines(text: str, *, what: str) -> dict[str, Any] | None:
    """A JSON object as typed, or None when the text is key = value lines."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise forms.ValidationError(
            f"Not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
        ) from exc
    except RecursionError:
        raise forms.ValidationError("The JSON nests too deep.") from None
    if not isinstance(value, dict):
        raise forms.ValidationError(f"The {what} must be a JSON object.")
    return value


def _scalar(text: str) -> Any:
    """'0.1' → 0.1, 'true' → True, 'balanced' → 'balanced': params keep their JSON type."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return text


_PARENT = re.compile(r"^(?P<model>[^\s:@]+)\s*(?:[:@]|\s+v|\s*v)\s*(?P<version>\d+)$")


class UploadForm(forms.Form):
    model_name = forms.CharField(
        label="Model",
        max_length=100,
        help_text="An existing model, or a new name to register a model (letters, digits, . _ -).",
        widget=forms.TextInput(attrs={"list": "model-names", "autocomplete": "off"}),
    )
    file = forms.FileField(
        label="Model file", help_text="pickle/joblib, skops, XGBoost, LightGBM, ONNX"
    )
    framework = forms.ChoiceField(
        label="Framework",
        choices=[(AUTO_FRAMEWORK, "Detect from the file"), *Framework.choices],
        initial=AUTO_FRAMEWORK,
    )
    description = forms.CharField(
        label="What changed in this version",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
    )
    params = forms.CharField(
        label="Parameters",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text="One per line as key = value (e.g. max_depth = 6), or a JSON object.",
    )
    metrics = forms.CharField(
        label="Metrics",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text="One per line as name = number (e.g. auc = 0.91), or a JSON object.",
    )
    tags = forms.CharField(label="Tags", required=False, help_text="Comma-separated")
    parents = forms.CharField(
        label="Parent versions",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        help_text="One per line as model:version (e.g. churn:3).",
    )
    datasets = forms.CharField(
        label="Datasets",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        help_text="One URI per line; start a line with training, validation or test to set "
        "its role (e.g. validation s3://bucket/holdout.parquet). Recorded, never opened.",
    )
    code_repo = forms.CharField(label="Code repository", required=False, max_length=500)
    code_commit = forms.CharField(label="Code commit", required=False, max_length=64)
    training_run_id = forms.CharField(label="Training run id", required=False, max_length=200)
    reference_data = forms.FileField(
        label="Reference data",
        required=False,
        help_text="CSV or Parquet sample of the inputs: the validation smoke test and the "
        "drift baseline.",
    )
    label_column = forms.CharField(
        label="Label column",
        required=False,
        max_length=200,
        help_text="The reference data's column of true labels, if it has one: kept out of "
        "the features, it gives the version's baseline quality.",
    )

    def _file_name_checked(self, field: str) -> Any:
        upload = self.cleaned_data.get(field)
        if upload is not None:
            try:
                client_filename_check(upload.name or "")
            except InvalidInput as exc:
                raise forms.ValidationError(exc.message) from exc
        return upload

    def clean_file(self):
        return self._file_name_checked("file")

    def clean_reference_data(self):
        return self._file_name_checked("reference_data")

    def clean_label_column(self) -> str | None:
        return self.cleaned_data["label_column"].strip() or None  # blank: no label column

    def clean_params(self) -> dict[str, Any]:
        text = self.cleaned_data["params"]
        parsed = _json_or_lines(text, what="parameters")
        if parsed is not None:
            return parsed
        return {k: _scalar(v) for k, v in _key_value_lines(text, what="parameter").items()}

    def clean_metrics(self) -> dict[str, Any]:
        text = self.cleaned_data["metrics"]
        parsed = _json_or_lines(text, what="metrics")
        if parsed is None:
            parsed = _key_value_lines(text, what="metric")
        metrics = {}
        for name, value in parsed.items():
            try:
                metrics[name] = float(value)
            except (TypeError, ValueError):
                raise forms.ValidationError(
                    f"Metric {name!r} must be a number, not {value!r}."
                ) from None
        return metrics

    def clean_tags(self) -> list[str]:
        return [t.strip() for t in self.cleaned_data["tags"].split(",") if t.strip()]

    def clean_parents(self) -> list[dict[str, Any]]:
        parents = []
        for number, raw in enumerate(self.cleaned_data["parents"].splitlines(), start=1):
            line = raw.strip()
            if not line:
                continue
            match = _PARENT.match(line)
            if match is None:
                raise forms.ValidationError(
                    f"Line {number}: {line!r} is not model:version (e.g. churn:3)."
                )
            parents.append({"model": match["model"], "version": int(match["version"])})
        return parents

    def clean_datasets(self) -> list[dict[str, str]]:
        datasets = []
        for raw in self.cleaned_data["datasets"].splitlines():
            line = raw.strip()
            if not line:
                continue
            first, _, rest = line.partition(" ")
            if first in DatasetRole.values and rest.strip():
                datasets.append({"role": first, "uri": rest.strip()})
            else:
                datasets.append({"uri": line})
        return datasets

    # Errors of the API's metadata serializer, by its key → this form's field.
    _METADATA_FIELDS = {
        "description": "description",
        "params": "params",
        "metrics": "metrics",
        "tags": "tags",
        "parents": "parents",
        "datasets": "datasets",
        "code_repo": "code_repo",
        "code_commit": "code_commit",
        "training_run_id": "training_run_id",
        "label_column": "label_column",
    }

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data  # what Form.clean returns, typed without its "| None"
        raw = {key: cleaned[key] for key in self._METADATA_FIELDS if key in cleaned}
        if len(raw) != len(self._METADATA_FIELDS):
            return cleaned  # a field already has its own error
        metadata = VersionMetadataSerializer(data=raw)
        if metadata.is_valid():
            cleaned["metadata"] = metadata.to_metadata()
        else:
            for key, errors in metadata.errors.items():
                self.add_error(self._METADATA_FIELDS.get(key), _flatten(errors))
        return cleaned

    @property
    def metadata(self) -> VersionMetadata:
        return self.cleaned_data["metadata"]


def _flatten(errors: Any) -> str:
    if isinstance(errors, dict):
        return "; ".join(f"{k}: {_flatten(v)}" for k, v in errors.items())
    if isinstance(errors, list):
        return "; ".join(_flatten(e) for e in errors if e)
    return str(errors)


class SubmitForm(forms.Form):
    comment = forms.CharField(
        label="Note for the reviewers", required=False, widget=forms.Textarea(attrs={"rows": 2})
    )


class AliasForm(forms.Form):
    alias = forms.CharField(
        label="Alias",
        max_length=64,
        help_text="e.g. staging, or production (protected: approved versions only)",
    )
    reason = forms.CharField(label="Reason", required=False, max_length=500)


class ReviewForm(forms.Form):
    decision = forms.ChoiceField(choices=ReviewDecision.choices, widget=forms.HiddenInput)
    comment = forms.CharField(
        label="Comment",
        required=False,
        max_length=10_000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Why you approve or reject; kept with the review and in the audit log.",
    )


class TokenForm(forms.Form):
    name = forms.CharField(label="Token name", max_length=100, help_text="e.g. ci-pipeline")
    scopes = forms.MultipleChoiceField(
        label="Limit to",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Leave all unticked for every permission of your role.",
    )
    expires_on = forms.DateField(
        label="Expires on",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Leave empty for a token that does not expire.",
    )

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        allowed = user_capabilities(user)
        form_field(self, "scopes", forms.MultipleChoiceField).choices = [
            (value, label) for value, label in Capability.choices if value in allowed
        ]

    def expires_at(self) -> datetime | None:
        day = self.cleaned_data.get("expires_on")
        if day is None:
            return None
        return timezone.make_aware(datetime.combine(day, time.max.replace(microsecond=0)))


class AuditFilterForm(forms.Form):
    action = forms.ChoiceField(
        label="Action", required=False, choices=[("", "Any action"), *AuditAction.choices]
    )
    actor = forms.CharField(label="Actor", required=False, max_length=150)
    object = forms.CharField(
        label="Object", required=False, max_length=200, help_text="e.g. churn v3"
    )
    since = forms.DateField(
        label="From", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        label="To", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )


class DeploymentForm(forms.Form):
    """A new deployment; the name, environment and uniqueness rules are deployment_create's."""

    name = forms.CharField(
        max_length=100, help_text="The stable endpoint name, e.g. churn-prod (letters, digits, -)"
    )
    model: forms.ModelChoiceField[RegisteredModel] = forms.ModelChoiceField(
        queryset=None, to_field_name="name", empty_label="Pick a registered model"
    )
    environment = forms.ChoiceField(choices=[])
    bake_seconds = forms.IntegerField(
        label="Bake period (seconds)",
        initial=300,
        min_value=0,
        max_value=7 * 24 * 3600,
        help_text="How long the previous slot stays warm after a switch, for instant rollback",
    )
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from deployments.choices import Environment
        from registry.selectors import model_list_by_name

        super().__init__(*args, **kwargs)
        form_field(self, "model", forms.ModelChoiceField).queryset = model_list_by_name()
        form_field(self, "environment", forms.ChoiceField).choices = Environment.choices


class DeploymentKeyForm(forms.Form):
    name = forms.CharField(
        label="Key name",
        max_length=100,
        initial="default",
        help_text="Who uses it, e.g. checkout-service; shown in the audit log",
    )
