"""Alembic migrations of the ledger (shipped as a package so installed copies can upgrade)."""
