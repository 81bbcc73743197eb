"""Create or update the MLflow server's own PostgreSQL role, as the RDS master user. Idempotent.

Run by the Job mlflow-db-bootstrap (k8s/mlflow/db-bootstrap-job.yaml) on every deploy: it makes the role exist
with the password currently in Secrets Manager and lets it create MLflow's tables. The schema itself is created
and migrated by `mlflow db upgrade` (the MLflow Deployment's init container), as that role.
"""

from __future__ import annotations

import os

import psycopg2
from psycopg2 import sql


def main() -> None:
    env = os.environ
    user, password, dbname = env["APP_USER"], env["APP_PASSWORD"], env["DB_NAME"]
    conn = psycopg2.connect(
        host=env["DB_HOST"],
        port=int(env["DB_PORT"]),
        dbname=dbname,
        user=env["ADMIN_USER"],
        password=env["ADMIN_PASSWORD"],
        sslmode="require",
        connect_timeout=10,
    )
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(sql.SQL(verb + " ROLE {} WITH LOGIN PASSWORD %s").format(sql.Identifier(user)), (password,))
        cur.execute(
            sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                sql.Identifier(dbname), sql.Identifier(user)
            )
        )
        # PostgreSQL >= 15 no longer lets every role create in `public`.
        cur.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(sql.Identifier(user)))
    conn.close()
    print(f"role {user}: {verb.lower()}d; may connect to {dbname} and create in schema public")


if __name__ == "__main__":
    main()
