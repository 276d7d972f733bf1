namespace Rbs.Orchestrator.State.Postgres;

/// <summary>One schema version: DDL statements, each idempotent on its own.</summary>
internal sealed record PostgresMigration(long Version, string Description, IReadOnlyList<string> Statements);

/// <summary>
/// The versioned schema of <see cref="PostgresStateStore"/>. Append new versions; never edit a shipped one.
/// </summary>
/// <remarks>
/// Everything here (and every statement in the store) stays inside what Cloud Spanner's PostgreSQL
/// dialect accepts through PGAdapter, so one store serves PostgreSQL and Spanner:
/// <list type="bullet">
/// <item>No SERIAL, IDENTITY or sequences: keys are natural text keys (agent id, user + repo hash,
/// lease name, migration version).</item>
/// <item>Spanner's <c>INSERT ... ON CONFLICT</c> only accepts the primary key columns as the conflict
/// target, and <c>DO UPDATE</c> without a <c>WHERE</c>. So the one-row-per-(user, repo) rule is the
/// agents table's primary key (agent_id is a unique secondary index), and the lease "take it only when
/// free, expired or ours" is an <c>INSERT ... ON CONFLICT (lease_name) DO NOTHING</c> followed by a
/// conditional <c>UPDATE</c>, not an upsert with a <c>WHERE</c>.</item>
/// <item>No advisory locks (<c>pg_advisory_lock</c> does not exist on Spanner), no <c>SELECT ... FOR
/// UPDATE</c>, no SAVEPOINT, no triggers, no partial indexes, no stored functions: concurrency comes
/// from single-statement conditional writes, which are atomic on both databases and never need a
/// client-side transaction retry loop.</item>
/// <item>No transactional DDL (Spanner rejects DDL inside a read/write transaction and PGAdapter runs DDL
/// outside transactions): each DDL statement runs on its own, is idempotent (<c>IF NOT EXISTS</c>), and
/// the version row is recorded afterwards with <c>ON CONFLICT (version) DO NOTHING</c>. A crash between
/// the two re-runs the idempotent DDL at the next start. A start on an up-to-date schema runs no DDL
/// (it reads <c>information_schema.tables</c> and <c>schema_migrations</c>), because on Spanner every
/// DDL statement is a slow, rate-limited schema change.</item>
/// <item>Types limited to <c>text</c>, <c>bigint</c> and <c>timestamptz</c>; no enums (state is stored by
/// name), no <c>IS NOT DISTINCT FROM</c> (the null/non-null owner comparison is spelled out), no
/// server-side <c>now()</c> (times come from the orchestrator's <see cref="TimeProvider"/>, which also
/// lets tests move the clock).</item>
/// </list>
/// </remarks>
internal static class PostgresSchema
{
    public const string CreateMigrationsTable = """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version bigint NOT NULL,
            description text NOT NULL,
            applied_at timestamptz NOT NULL,
            PRIMARY KEY (version)
        )
        """;

    public static IReadOnlyList<PostgresMigration> Migrations { get; } =
    [
        new(1, "agents and leases",
        [
            """
            CREATE TABLE IF NOT EXISTS agents (
                user_id text NOT NULL,
                repo_hash text NOT NULL,
                agent_id text NOT NULL,
                source_path text NOT NULL,
                backend text NOT NULL,
                backend_ref text NOT NULL,
                address text NOT NULL,
                state text NOT NULL,
                created_at timestamptz NOT NULL,
                last_used_at timestamptz NOT NULL,
                lease_owner text,
                lease_expires_at timestamptz,
                PRIMARY KEY (user_id, repo_hash)
            )
            """,
            "CREATE UNIQUE INDEX IF NOT EXISTS agents_agent_id_key ON agents (agent_id)",
            """
            CREATE TABLE IF NOT EXISTS leases (
                lease_name text NOT NULL,
                owner_id text NOT NULL,
                expires_at timestamptz NOT NULL,
                PRIMARY KEY (lease_name)
            )
            """,
        ]),
    ];

    public static long LatestVersion => Migrations[^1].Version;
}
