"""For receivers: verify a visionq delivery (any Standard Webhooks library works too)."""
from tasks.webhooks import WebhookVerificationError, verify

__all__ = ["WebhookVerificationError", "verify"]
