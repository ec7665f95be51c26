"""Prefect flows: composition only. Importing any flow makes every log record of the process pass through the
secrets redaction first (workers import flows from here, so deployment runs get it too)."""
from infra.secrets import redact_log_records

redact_log_records()
