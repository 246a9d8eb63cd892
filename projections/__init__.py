"""Read models: the pure fold of events into run state, its SQL schema and migrations."""
