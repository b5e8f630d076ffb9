"""Models that replay traces: runtime latency and guest memory."""
