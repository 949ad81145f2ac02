"""The local stack: real servers on loopback behind `llmops stack up | status | down | logs`."""
