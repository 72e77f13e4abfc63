"""Prefect blocks: configuration and credentials only; each builds the mlstage object it configures."""
