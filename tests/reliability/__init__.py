"""Reliability: fuzzing, crash safety, load, isolation, limits, secrets, observability."""
