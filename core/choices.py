from django.db import models


class AuditAction(models.TextChoices):
    MODEL_CREATED = "model.created"
    MODEL_UPDATED = "model.updated"
    VERSION_UPLOADED = "version.uploaded"
    VERSION_STATE_CHANGED = "version.state_changed"
    VERSION_REVIEWED = "version.reviewed"
    ALIAS_SET = "alias.set"
    ALIAS_DELETED = "alias.deleted"
    TOKEN_CREATED = "token.created"  # noqa: S105
    TOKEN_REVOKED = "token.revoked"  # noqa: S105
    USER_CREATED = "user.created"
    DEPLOYMENT_CREATED = "deployment.created"
    ROLLOUT_STATE_CHANGED = "rollout.state_changed"
    ROLLBACK = "deployment.rollback"
    BATCH_JOB_STATE_CHANGED = "batch_job.state_changed"
    BATCH_SCHEDULE_CREATED = "batch_schedule.created"
    BATCH_SCHEDULE_UPDATED = "batch_schedule.updated"
    BATCH_SCHEDULE_DELETED = "batch_schedule.deleted"
    BATCH_SCHEDULE_FIRED = "batch_schedule.fired"
    DEPLOYMENT_UPDATED = "deployment.updated"
    DEPLOYMENT_KEY_CREATED = "deployment_key.created"
    DEPLOYMENT_KEY_REVOKED = "deployment_key.revoked"
    MONITORING_POLICY_UPDATED = "monitoring_policy.updated"
    WEBHOOK_CREATED = "webhook.created"
    WEBHOOK_UPDATED = "webhook.updated"
    WEBHOOK_DELETED = "webhook.deleted"
    LOGIN_SUCCEEDED = "auth.login"
    LOGIN_FAILED = "auth.login_failed"
    LOGOUT = "auth.logout"


class Capability(models.TextChoices):
    """What an action needs. Lives in core so every layer can name one; roles map to capabilities in
    accounts.permissions only."""

    VIEW = "view"
    MANAGE_MODELS = "manage_models"  # create/edit registered models
    UPLOAD = "upload"
    SUBMIT = "submit"
    REVIEW = "review"
    SET_ALIAS = "set_alias"
    DEPLOY = "deploy"  # create deployments, roll out, roll back
    RUN_BATCH = "run_batch"
    LABEL = "label"  # post ground-truth labels of logged predictions
    MANAGE_TOKENS = "manage_tokens"  # own tokens
    ADMIN = "admin"
