"""Configuration: pydantic models, YAML loading, environment overrides, validation messages."""
