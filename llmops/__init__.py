"""elastic-llmops core: configs, decisions and adapters. Pure: never imports prefect, flows or tasks."""

__version__ = "0.1.0"
