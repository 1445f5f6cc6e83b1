"""Drift's two inputs: a version's reference profile (pre-binned once, typed by its model
contract) and the live samples the gateway streams (``modelyard:samples:{deployment}``, see
``gateway.sampling``: request bodies cut to a few rows, and the answers' predictions).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import numpy as np
import pandas as pd
import redis
from django.conf import settings
from django.db import transaction

from deployments.choices import SlotState
from deployments.models import Slot
from gateway.sampling import samples_key
from monitoring import drift_stats as ds
from monitoring.choices import FeatureKind
from monitoring.models import DriftProfile
from monitoring.services.rollups import metrics_redis
from registry.modelkit import contract as model_contract
from registry.models import ModelVersion
from registry.services.artifacts import artifact_local_path
from registry.validation.reference import (
    contract_schema,
    infer_schema,
    load_reference_frame,
    reference_rows,
)

logger = logging.getLogger(__name__)

PREDICTION = "__prediction__"
_PREDICT_CHUNK = 1000


# --- profiles -------------------------------------------------------------------------------


def build_profiles(
    frame: pd.DataFrame, schema: list[dict[str, Any]] | None = None
) -> dict[str, ds.NumericProfile | ds.CategoricalProfile]:
    """Profile every column of a reference frame by the kind its schema gives it."""
    schema = schema or infer_schema(frame)
    profiles: dict[str, ds.NumericProfile | ds.CategoricalProfile] = {}
    for column in schema:
        name = column["name"]
        if name not in frame.columns:
            continue
        values = frame[name]
        try:
            if column["kind"] == FeatureKind.NUMERIC:
                profiles[name] = ds.numeric_profile(
                    pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64),
                    bins=settings.MODELYARD_DRIFT_BINS,
                )
            else:
                profiles[name] = ds.categorical_profile(
                    values.to_numpy(dtype=object),
                    max_categories=settings.MODELYARD_DRIFT_MAX_CATEGORIES,
                )
        except ValueError as exc:  # an all-empty column: nothing to compare against
            logger.info("no drift profile for column %r: %s", name, exc)
    return profiles


def prediction_profile(
    values: list[Any], *, output: dict[str, Any] | None = None
) -> ds.NumericProfile | ds.CategoricalProfile | None:
    """Predictions are categorical when they are labels: the contract's ``output`` says so
    (a regressor's few whole values stay numeric); without one, strings, bools and few
    integers are taken for labels."""
    scalars = [v for v in values if not isinstance(v, (list, dict))]
    if not scalars:
        return None
    kind = (output or {}).get("kind")
    if kind == "label" or (kind != "value" and _looks_categorical(scalars)):
        return ds.categorical_profile(
            np.asarray(scalars, dtype=object),
            max_categories=settings.MODELYARD_DRIFT_MAX_CATEGORIES,
        )
    return ds.numeric_profile(
        np.asarray(scalars, dtype=np.float64), bins=settings.MODELYARD_DRIFT_BINS
    )


def _looks_categorical(values: list[Any]) -> bool:
    if any(isinstance(v, (str, bool)) or v is None for v in values):
        return True
    integral = all(float(v).is_integer() for v in values)
    return integral and len(set(values)) <= settings.MODELYARD_DRIFT_MAX_CATEGORIES


def profiling_contract(version: ModelVersion) -> dict[str, Any] | None:
    """The version's contract as drift reads data with it: every feature may be missing
    (drift measures the missing rate; it never feeds the model), none is strict.

    None for a version without one (validated before the contract existed): pandas' reading
    of the reference, and the schema recorded at upload, are then all there is.
    """
    contract = version.contract if isinstance(version.contract, dict) else {}
    if not contract.get("features"):
        return None
    features = [{**f, "nullable": True, "strict": False} for f in contract["features"]]
    return {**contract, "features": features}


def typed_live(contract: dict[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    """Sampled rows typed by the contract, as the reference was, column by column: a column
    the contract cannot type (rows the model refused are sampled too) is compared as sent."""
    typed: dict[str, Any] = {}
    for feature in contract["features"]:
        name = feature["name"]
        if name not in frame.columns:
            continue
        try:
            one = model_contract.typed_frame({"features": [feature]}, frame[[name]])
            typed[name] = one[name]
        except model_contract.ContractError:
            typed[name] = frame[name]
    return pd.DataFrame(typed, index=frame.index)


def _profile_current(profile: DriftProfile, schema: list[dict[str, Any]] | None) -> bool:
    """Built from today's reference, with the kinds the schema gives (a profile built from
    pandas' guesses before the contract typed the reference is built again)."""
    if schema is None:
        return True
    kinds = {column["name"]: column["kind"] for column in schema}
    return all(kinds.get(f["name"]) == f["kind"] for f in profile.features)


@transaction.atomic
def drift_profile_ensure(*, version: ModelVersion) -> DriftProfile | None:
    """The version's reference profile, built once (again only if the reference changed)."""
    if not version.reference_path:
        return None
    contract = profiling_contract(version)
    # The model's features typed by its contract, as every model process reads them.
    schema = contract_schema(contract) if contract else None
    profile = DriftProfile.objects.select_for_update().filter(version=version).first()
    if (
        profile is not None
        and profile.reference_sha256 == version.reference_sha256
        and _profile_current(profile, schema)
    ):
        return profile
    with artifact_local_path(version.reference_path) as path:
        frame = load_reference_frame(
            path,
            max_rows=settings.MODELYARD_MAX_REFERENCE_ROWS,
            contract=contract,
            label_column=version.reference_label_column,
        )
    profiles = build_profiles(frame, schema or version.reference_schema or None)
    described, blob = ds.profiles_to_storage(profiles)
    profile, _ = DriftProfile.objects.update_or_create(
        version=version,
        defaults={
            "reference_sha256": version.reference_sha256,
            "reference_rows": len(frame),
            "features": described,
            "arrays": blob,
            "prediction": None,
            "prediction_arrays": None,
        },
    )
    return profile


def drift_prediction_profile_ensure(*, profile: DriftProfile, version: ModelVersion) -> bool:
    """Baseline of the prediction distribution: the version's answers on its reference.

    Asked of a ready slot serving the version (models are only ever loaded in a serving or
    sandbox process, never here); False while none serves it, so the next window retries.
    """
    if profile.prediction is not None:
        return True
    slot = Slot.objects.filter(version=version, state=SlotState.READY).exclude(url="").first()
    if slot is None:
        return False
    with artifact_local_path(version.reference_path) as path:
        if version.contract:  # rows exactly as a client sends them (registry/modelkit)
            records = reference_rows(
                path,
                contract=version.contract,
                max_rows=settings.MODELYARD_MAX_REFERENCE_ROWS,
                label_column=version.reference_label_column,
            )
        else:
            frame = load_reference_frame(
                path,
                max_rows=settings.MODELYARD_MAX_REFERENCE_ROWS,
                label_column=version.reference_label_column,
            )
            records = json.loads(frame.to_json(orient="records"))
    predictions: list[Any] = []
    try:
        with httpx.Client(timeout=30) as http:
            for offset in range(0, len(records), _PREDICT_CHUNK):
                response = http.post(
                    f"{slot.url}/predict",
                    json={"instances": records[offset : offset + _PREDICT_CHUNK]},
                )
                response.raise_for_status()
                predictions += _prediction_values(response.json())
    except (httpx.HTTPError, ValueError) as exc:
        logger.warning("prediction baseline of %s not built: %s", version, exc)
        return False
    built = prediction_profile(predictions, output=(version.contract or {}).get("output"))
    if built is None:
        return False
    described, blob = ds.profiles_to_storage({PREDICTION: built})
    DriftProfile.objects.filter(pk=profile.pk).update(prediction=described, prediction_arrays=blob)
    profile.prediction, profile.prediction_arrays = described, blob
    return True


def profiles_of(profile: DriftProfile) -> dict[str, ds.NumericProfile | ds.CategoricalProfile]:
    return ds.profiles_from_storage(profile.features, profile.arrays)


# --- live samples ---------------------------------------------------------------------------


@dataclass
class LiveSamples:
    """Sampled rows of one version: inputs as records or lists, predictions as scalars."""

    records: list[dict[str, Any]] = field(default_factory=list)
    lists: list[list[Any]] = field(default_factory=list)
    predictions: list[Any] = field(default_factory=list)

    def frame(self, feature_names: list[str]) -> pd.DataFrame:
        parts = []
        if self.records:
            parts.append(pd.DataFrame.from_records(self.records))
        if self.lists:
            width = max(len(row) for row in self.lists)
            names = (feature_names + [f"f{i}" for i in range(len(feature_names), width)])[:width]
            parts.append(pd.DataFrame(self.lists, columns=names))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def sent_fields(self, feature_names: list[str]) -> set[str]:
        """Field names the records carried, and ``[i]`` for list positions past the features."""
        sent: set[str] = set()
        for record in self.records:
            sent.update(record)
        width = max((len(row) for row in self.lists), default=0)
        sent.update(f"[{i}]" for i in range(len(feature_names), width))
        return sent


def _prediction_values(answer: Any) -> list[Any]:
    values = answer.get("predictions", []) if isinstance(answer, dict) else answer
    return list(values) if isinstance(values, list) else []


def _text(value: bytes | str | None) -> str:
    """A stream id or field name as text. metrics_redis() answers bytes; redis-py's types also
    allow str (a decoding client) and None, which XRANGE never answers for an id."""
    if isinstance(value, bytes):
        return value.decode()
    if value is None:
        raise ValueError("a stream entry without an id")
    return value


def samples_read(
    *, deployment: str, start: datetime, end: datetime, client: redis.Redis | None = None
) -> dict[int, LiveSamples]:
    """Sampled requests of ``[start, end)`` per version (stream ids are ms timestamps)."""
    client = client or metrics_redis()
    low, high = int(start.timestamp() * 1000), int(end.timestamp() * 1000) - 1
    by_version: dict[int, LiveSamples] = {}
    cursor = str(low)
    while True:
        # XRANGE answers a list, empty for a missing stream (redis-py types None as well).
        entries = (
            client.xrange(samples_key(deployment), min=cursor, max=str(high), count=2000) or []
        )
        for _entry_id, fields in entries:
            values = {_text(k): v for k, v in (fields or {}).items()}
            try:
                version = int(values["version"])
                inputs = json.loads(values["inputs"])
                outputs = json.loads(values["outputs"])
            except (KeyError, ValueError):
                continue
            live = by_version.setdefault(version, LiveSamples())
            instances = inputs.get("instances") if isinstance(inputs, dict) else None
            if isinstance(instances, list):
                for row in instances:
                    if isinstance(row, dict):
                        live.records.append(row)
                    elif isinstance(row, list):
                        live.lists.append(row)
            live.predictions += _prediction_values(outputs)
        if len(entries) < 2000:
            break
        last = _text(entries[-1][0])
        ms, seq = last.split("-")
        cursor = f"{ms}-{int(seq) + 1}"
    return by_version
