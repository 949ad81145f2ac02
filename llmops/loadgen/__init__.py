"""Load generator: steady, burst or trace-replay OpenAI traffic through the gateway."""
