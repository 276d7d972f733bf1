using System.Data.Common;
using System.Globalization;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Options;
using Rbs.Orchestrator.Hosting;

namespace Rbs.Orchestrator.State;

/// <summary>
/// The embedded default <see cref="IStateStore"/>: one SQLite file, WAL mode so readers never block the
/// writer, and a busy timeout so several connections (or orchestrator processes) can share it.
/// The SQL stays deliberately plain (text keys, unix-millisecond integers, single statements or
/// explicit transactions) so the PostgreSQL/Spanner store can mirror it one to one.
/// </summary>
internal sealed class SqliteStateStore(IOptions<OrchestratorOptions> options, TimeProvider timeProvider) : IStateStore
{
    // Each entry is applied once, in order, inside the migration transaction; never edit a shipped one.
    private static readonly string[] s_migrations =
    [
        """
        CREATE TABLE agents (
            agent_id            TEXT    NOT NULL PRIMARY KEY,
            user_id             TEXT    NOT NULL,
            repo_hash           TEXT    NOT NULL,
            source_path         TEXT    NOT NULL,
            backend             TEXT    NOT NULL,
            backend_ref         TEXT    NOT NULL,
            address             TEXT    NOT NULL,
            state               TEXT    NOT NULL,
            created_at_ms       INTEGER NOT NULL,
            last_used_at_ms     INTEGER NOT NULL,
            lease_owner         TEXT    NULL,
            lease_expires_at_ms INTEGER NULL,
            CONSTRAINT agents_user_repo UNIQUE (user_id, repo_hash)
        );
        CREATE TABLE leases (
            name          TEXT    NOT NULL PRIMARY KEY,
            owner         TEXT    NOT NULL,
            expires_at_ms INTEGER NOT NULL
        );
        """,
    ];

    private const string AgentColumns =
        "agent_id, user_id, repo_hash, source_path, backend, backend_ref, address, state, " +
        "created_at_ms, last_used_at_ms, lease_owner, lease_expires_at_ms";

    private readonly string _connectionString = new SqliteConnectionStringBuilder
    {
        DataSource = options.Value.GetStatePath(),
        Mode = SqliteOpenMode.ReadWriteCreate,
        Cache = SqliteCacheMode.Private,
        Pooling = true,
        // Microsoft.Data.Sqlite retries SQLITE_BUSY until the command timeout; keep it bounded.
        DefaultTimeout = 10,
    }.ToString();

    /// <summary>The database file.</summary>
    public string Path { get; } = options.Value.GetStatePath();

    public string Description => "sqlite " + Path;

    public async Task InitializeAsync(CancellationToken cancellationToken)
    {
        var directory = System.IO.Path.GetDirectoryName(Path);
        if (!string.IsNullOrEmpty(directory))
        {
            Directory.CreateDirectory(directory);
        }

        await using var connection = await OpenAsync(cancellationToken);

        // WAL is persistent in the file; setting it outside a transaction is required.
        await ExecuteAsync(connection, null, "PRAGMA journal_mode=WAL;", cancellationToken);

        // IMMEDIATE takes the write lock up front, so two processes starting at once serialize here
        // instead of both applying the same migration.
        await using var transaction = connection.BeginTransaction(deferred: false);
        await ExecuteAsync(
            connection,
            transaction,
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER NOT NULL PRIMARY KEY, applied_at_ms INTEGER NOT NULL);",
            cancellationToken);

        await using (var command = connection.CreateCommand())
        {
            command.Transaction = transaction;
            command.CommandText = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations;";
            var current = Convert.ToInt32(await command.ExecuteScalarAsync(cancellationToken), CultureInfo.InvariantCulture);
            if (current > s_migrations.Length)
            {
                throw new InvalidOperationException(
                    $"state database {Path} has schema version {current}, newer than this orchestrator understands ({s_migrations.Length}); upgrade rbs-orchestrator or use another --state-path");
            }

            for (var version = current + 1; version <= s_migrations.Length; version++)
            {
                await ExecuteAsync(connection, transaction, s_migrations[version - 1], cancellationToken);
                await using var record = connection.CreateCommand();
                record.Transaction = transaction;
                record.CommandText = "INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($version, $now);";
                record.Parameters.AddWithValue("$version", version);
                record.Parameters.AddWithValue("$now", timeProvider.GetUtcNow().ToUnixTimeMilliseconds());
                await record.ExecuteNonQueryAsync(cancellationToken);
            }
        }

        await transaction.CommitAsync(cancellationToken);
    }

    public async Task CheckAsync(CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT count(*) FROM (SELECT 1 FROM agents LIMIT 1);";
        await command.ExecuteScalarAsync(cancellationToken);
    }

    public async Task<AgentRecord?> GetAsync(string agentId, CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = $"SELECT {AgentColumns} FROM agents WHERE agent_id = $agent_id;";
        command.Parameters.AddWithValue("$agent_id", agentId);
        return await ReadSingleAsync(command, cancellationToken);
    }

    public async Task<AgentRecord?> FindAsync(string userId, string repoHash, CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = $"SELECT {AgentColumns} FROM agents WHERE user_id = $user_id AND repo_hash = $repo_hash;";
        command.Parameters.AddWithValue("$user_id", userId);
        command.Parameters.AddWithValue("$repo_hash", repoHash);
        return await ReadSingleAsync(command, cancellationToken);
    }

    public async Task<IReadOnlyList<AgentRecord>> ListAsync(CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = $"SELECT {AgentColumns} FROM agents ORDER BY created_at_ms, agent_id;";
        var result = new List<AgentRecord>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            result.Add(ReadRecord(reader));
        }

        return result;
    }

    public async Task<bool> TryInsertAsync(AgentRecord record, CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        // One statement: the UNIQUE (user_id, repo_hash) constraint decides the winner atomically.
        command.CommandText =
            $"INSERT INTO agents ({AgentColumns}) VALUES ($agent_id, $user_id, $repo_hash, $source_path, $backend, " +
            "$backend_ref, $address, $state, $created_at_ms, $last_used_at_ms, $lease_owner, $lease_expires_at_ms) " +
            "ON CONFLICT DO NOTHING;";
        AddRecordParameters(command, record);
        return await command.ExecuteNonQueryAsync(cancellationToken) == 1;
    }

    public async Task<bool> TryUpdateAsync(AgentRecord expected, AgentRecord updated, CancellationToken cancellationToken)
    {
        if (!string.Equals(expected.AgentId, updated.AgentId, StringComparison.Ordinal))
        {
            throw new ArgumentException("an update cannot change the agent id", nameof(updated));
        }

        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText =
            "UPDATE agents SET user_id = $user_id, repo_hash = $repo_hash, source_path = $source_path, backend = $backend, " +
            "backend_ref = $backend_ref, address = $address, state = $state, created_at_ms = $created_at_ms, " +
            "last_used_at_ms = $last_used_at_ms, lease_owner = $lease_owner, lease_expires_at_ms = $lease_expires_at_ms " +
            "WHERE agent_id = $agent_id AND state = $expected_state AND " +
            "(lease_owner = $expected_owner OR (lease_owner IS NULL AND $expected_owner IS NULL));";
        AddRecordParameters(command, updated);
        command.Parameters.AddWithValue("$expected_state", StateToText(expected.State));
        command.Parameters.AddWithValue("$expected_owner", (object?)expected.LeaseOwner ?? DBNull.Value);
        return await command.ExecuteNonQueryAsync(cancellationToken) == 1;
    }

    public async Task TouchAsync(string agentId, DateTimeOffset at, CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = "UPDATE agents SET last_used_at_ms = $at WHERE agent_id = $agent_id AND last_used_at_ms < $at;";
        command.Parameters.AddWithValue("$agent_id", agentId);
        command.Parameters.AddWithValue("$at", at.ToUnixTimeMilliseconds());
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    public async Task<bool> DeleteAsync(string agentId, CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = "DELETE FROM agents WHERE agent_id = $agent_id;";
        command.Parameters.AddWithValue("$agent_id", agentId);
        return await command.ExecuteNonQueryAsync(cancellationToken) == 1;
    }

    public async Task<bool> TryAcquireLeaseAsync(string name, string owner, TimeSpan duration, CancellationToken cancellationToken)
    {
        var now = timeProvider.GetUtcNow().ToUnixTimeMilliseconds();
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        // Take a free or lapsed lease, or renew our own; a live lease held by someone else is left alone
        // and the statement changes nothing.
        command.CommandText =
            "INSERT INTO leases (name, owner, expires_at_ms) VALUES ($name, $owner, $expires) " +
            "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at_ms = excluded.expires_at_ms " +
            "WHERE leases.owner = excluded.owner OR leases.expires_at_ms <= $now;";
        command.Parameters.AddWithValue("$name", name);
        command.Parameters.AddWithValue("$owner", owner);
        command.Parameters.AddWithValue("$expires", now + (long)duration.TotalMilliseconds);
        command.Parameters.AddWithValue("$now", now);
        return await command.ExecuteNonQueryAsync(cancellationToken) == 1;
    }

    public async Task<IReadOnlyList<LeaseRecord>> ListLeasesAsync(string prefix, CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        // A range, not LIKE: a prefix may hold LIKE's wildcards.
        command.CommandText =
            "SELECT name, owner, expires_at_ms FROM leases WHERE name >= $prefix AND name < $end AND expires_at_ms > $now ORDER BY name;";
        command.Parameters.AddWithValue("$prefix", prefix);
        command.Parameters.AddWithValue("$end", LeaseRecord.PrefixEnd(prefix));
        command.Parameters.AddWithValue("$now", timeProvider.GetUtcNow().ToUnixTimeMilliseconds());
        var result = new List<LeaseRecord>();
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            result.Add(new LeaseRecord(reader.GetString(0), reader.GetString(1), DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(2))));
        }

        return result;
    }

    public async Task<bool> ReleaseLeaseAsync(string name, string owner, CancellationToken cancellationToken)
    {
        await using var connection = await OpenAsync(cancellationToken);
        await using var command = connection.CreateCommand();
        command.CommandText = "DELETE FROM leases WHERE name = $name AND owner = $owner;";
        command.Parameters.AddWithValue("$name", name);
        command.Parameters.AddWithValue("$owner", owner);
        return await command.ExecuteNonQueryAsync(cancellationToken) == 1;
    }

    private async Task<SqliteConnection> OpenAsync(CancellationToken cancellationToken)
    {
        var connection = new SqliteConnection(_connectionString);
        try
        {
            await connection.OpenAsync(cancellationToken);
            // Per-connection settings: wait for other writers instead of failing with SQLITE_BUSY, and
            // in WAL mode NORMAL keeps commits cheap (the warm GetServer path writes a touch).
            await ExecuteAsync(connection, null, "PRAGMA busy_timeout=10000; PRAGMA synchronous=NORMAL;", cancellationToken);
            return connection;
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    private static async Task ExecuteAsync(SqliteConnection connection, SqliteTransaction? transaction, string sql, CancellationToken cancellationToken)
    {
        await using var command = connection.CreateCommand();
        command.Transaction = transaction;
        command.CommandText = sql;
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    private static async Task<AgentRecord?> ReadSingleAsync(SqliteCommand command, CancellationToken cancellationToken)
    {
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        return await reader.ReadAsync(cancellationToken) ? ReadRecord(reader) : null;
    }

    private static AgentRecord ReadRecord(DbDataReader reader) => new(
        AgentId: reader.GetString(0),
        UserId: reader.GetString(1),
        RepoHash: reader.GetString(2),
        SourcePath: reader.GetString(3),
        Backend: reader.GetString(4),
        BackendRef: reader.GetString(5),
        Address: reader.GetString(6),
        State: TextToState(reader.GetString(7)),
        CreatedAt: DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(8)),
        LastUsedAt: DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(9)),
        LeaseOwner: reader.IsDBNull(10) ? null : reader.GetString(10),
        LeaseExpiresAt: reader.IsDBNull(11) ? null : DateTimeOffset.FromUnixTimeMilliseconds(reader.GetInt64(11)));

    private static void AddRecordParameters(SqliteCommand command, AgentRecord record)
    {
        command.Parameters.AddWithValue("$agent_id", record.AgentId);
        command.Parameters.AddWithValue("$user_id", record.UserId);
        command.Parameters.AddWithValue("$repo_hash", record.RepoHash);
        command.Parameters.AddWithValue("$source_path", record.SourcePath);
        command.Parameters.AddWithValue("$backend", record.Backend);
        command.Parameters.AddWithValue("$backend_ref", record.BackendRef);
        command.Parameters.AddWithValue("$address", record.Address);
        command.Parameters.AddWithValue("$state", StateToText(record.State));
        command.Parameters.AddWithValue("$created_at_ms", record.CreatedAt.ToUnixTimeMilliseconds());
        command.Parameters.AddWithValue("$last_used_at_ms", record.LastUsedAt.ToUnixTimeMilliseconds());
        command.Parameters.AddWithValue("$lease_owner", (object?)record.LeaseOwner ?? DBNull.Value);
        command.Parameters.AddWithValue(
            "$lease_expires_at_ms",
            record.LeaseExpiresAt is { } expires ? expires.ToUnixTimeMilliseconds() : DBNull.Value);
    }

    // States are stored as text so the rows stay readable with the sqlite3 shell and portable across stores.
    internal static string StateToText(AgentState state) => state switch
    {
        AgentState.Allocating => "allocating",
        AgentState.Ready => "ready",
        AgentState.Terminating => "terminating",
        _ => throw new ArgumentOutOfRangeException(nameof(state), state, "unknown agent state"),
    };

    internal static AgentState TextToState(string text) => text switch
    {
        "allocating" => AgentState.Allocating,
        "ready" => AgentState.Ready,
        "terminating" => AgentState.Terminating,
        _ => throw new InvalidDataException($"unknown agent state '{text}' in the state database"),
    };
}
