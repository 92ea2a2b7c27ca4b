"""What a manager tells the world: events and the audit log, metrics,
JSON logging and redaction, the webhook sender and the Prometheus collector.
"""
