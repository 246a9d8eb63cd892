"""Consumers: processes that read runlog.events and fold them into PostgreSQL read models."""
