"""The supervisor: owns the model runners and serves the API. Never imports cli/ or rich."""
