"""Fixtures for the embedder tests: `photos` and `random_clip_folder` live in tests/conftest.py
(shared with the API tests); the models themselves are module-scoped fixtures in their test
modules, so each loads once."""
