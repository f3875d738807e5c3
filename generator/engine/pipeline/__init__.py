"""Multi-stage pipelines: the stage DAG, its continuous scheduler, verifiers, filters, seed data."""
