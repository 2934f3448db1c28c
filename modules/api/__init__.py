"""The A1111-compatible HTTP API (/sdapi/v1): pydantic models with bounds, translation to GenerationRequest, routes."""
