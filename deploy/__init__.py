"""Running runlog: the local stack (Kafka, PostgreSQL, services) and the `runlog` command."""
