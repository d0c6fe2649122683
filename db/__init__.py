"""Store: machines, profiles, plans and measured runs (SQLAlchemy 2.0, Alembic)."""
