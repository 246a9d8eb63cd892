"""The HTTP API: read views over the PostgreSQL read models (commands come with a later step)."""
