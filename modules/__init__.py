"""The WebUI application package."""
