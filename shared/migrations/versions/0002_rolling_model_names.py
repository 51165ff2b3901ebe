"""rolling-window models get their own names

A rolling-window model used to be named ``<prefix>-<year>``, the name of the independent model of that
year, so the two layouts shared one registry name (one blessed version between them) and one TF Serving
entry. Their rows are renamed ``<prefix>-rolling-<year>`` (shared.models.model_name); the versions keep
their numbers and their objects stay where they were written: ``exports.prefix`` records that place
(shared.models.version_prefix), and is set here for a row that lacks it.

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

OLD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<year>\d{4})$")
NEW_NAME = re.compile(r"^(?P<prefix>.+)-rolling-(?P<year>\d{4})$")

model_versions = sa.table(
    "model_versions",
    sa.column("id", sa.Integer), sa.column("name", sa.String), sa.column("version", sa.Integer),
    sa.column("layout", sa.String), sa.column("window", sa.String), sa.column("exports", sa.JSON),
)


def _rolling_rows(connection: sa.Connection) -> list[sa.Row]:
    return list(connection.execute(
        sa.select(model_versions.c.id, model_versions.c.name, model_versions.c.version,
                  model_versions.c.exports)
        .where(model_versions.c.layout == "window", model_versions.c.window == "rolling")))


def upgrade() -> None:
    connection = op.get_bind()
    for row in _rolling_rows(connection):
        if NEW_NAME.match(row.name) or not (match := OLD_NAME.match(row.name)):
            continue
        exports = dict(row.exports or {})
        exports.setdefault("prefix", f"models/{row.name}/{row.version}")
        connection.execute(model_versions.update().where(model_versions.c.id == row.id).values(
            name=f"{match['prefix']}-rolling-{match['year']}", exports=exports))


def downgrade() -> None:
    # Back to the shared name where that (name, version) is still free; a rolling version registered
    # after the upgrade may hold a number the independent model also has, and keeps its new name.
    connection = op.get_bind()
    for row in _rolling_rows(connection):
        if not (match := NEW_NAME.match(row.name)):
            continue
        old_name = f"{match['prefix']}-{match['year']}"
        taken = connection.execute(sa.select(model_versions.c.id).where(
            model_versions.c.name == old_name, model_versions.c.version == row.version)).first()
        if taken is None:
            connection.execute(model_versions.update().where(model_versions.c.id == row.id)
                               .values(name=old_name))
