from django.db import models


class VersionState(models.TextChoices):
    UPLOADED = "uploaded"
    VALIDATING = "validating"
    VALIDATED = "validated"
    INVALID = "invalid"
    IN_REVIEW = "in_review"
    APPROVED = "approved"
    REJECTED = "rejected"
    ARCHIVED = "archived"


class Framework(models.TextChoices):
    SKLEARN = "sklearn", "scikit-learn (pickle/joblib)"
    SKOPS = "skops", "scikit-learn (skops)"
    XGBOOST = "xgboost", "XGBoost (JSON/UBJ)"
    LIGHTGBM = "lightgbm", "LightGBM (text)"
    ONNX = "onnx", "ONNX"


class ReviewDecision(models.TextChoices):
    APPROVE = "approve"
    REJECT = "reject"


class DatasetRole(models.TextChoices):
    TRAINING = "training"
    VALIDATION = "validation"
    TEST = "test"
    OTHER = "other"
