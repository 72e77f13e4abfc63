"""Prefect flows: thin wrappers that read like the pipeline diagram; logic lives in mlstage."""
