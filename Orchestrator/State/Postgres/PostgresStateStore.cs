using System.Data.Common;
using System.Globalization;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Npgsql;
using NpgsqlTypes;

namespace Rbs.Orchestrator.State.Postgres;

/// <summary>
/// <see cref="IStateStore"/> on PostgreSQL, shared by several orchestrator replicas; also Cloud Spanner
/// through PGAdapter (see <see cref="PostgresSchema"/> for the dialect rules the SQL follows).
/// </summary>
/// <remarks>
/// Every write is one conditional statement, so it is atomic without a client transaction and races
/// between replicas are decided by the database: one row per (user, repo) is the primary key
/// (<c>INSERT ... ON CONFLICT DO NOTHING</c>), updates compare state and lease owner in their
/// <c>WHERE</c>, and leases change hands only through a conditional <c>UPDATE</c>.
/// Database failures surface as <see cref="StateStoreUnavailableException"/>. A connection that died
/// (server restart, failover, <c>pg_terminate_backend</c>) is retried once on a fresh one after the
/// pool's idle connections are dropped, so the first request after the database returns succeeds.
/// </remarks>
internal sealed partial class PostgresStateStore(
    IOptions<PostgresStateStoreOptions> options,
    TimeProvider timeProvider,
    ILogger<PostgresStateStore> logger) : IStateStore, IAsyncDisposable, IDisposable
{
    private const string AgentColumns =
        "agent_id, user_id, repo_hash, source_path, backend, backend_ref, address, state, " +
        "created_at, last_used_at, lease_owner, lease_expires_at";

    // Serialization failures (40001; Spanner aborts, PostgreSQL serializable conflicts) and deadlocks
    // roll the statement back, so running it again is safe.
    private const int MaxConflictAttempts = 5;

    // Concurrent CREATE ... IF NOT EXISTS on plain PostgreSQL can still fail with 42P07/42710, or 23505
    // on the system catalogs, when two replicas create the same object at the same moment.
    private const int MaxDdlAttempts = 5;

    private readonly NpgsqlDataSource _dataSource = BuildDataSource(options.Value);
    private readonly string _target = DescribeTarget(options.Value.ConnectionString);

    public string Description => "postgres " + _target;

    public async Task InitializeAsync(CancellationToken cancellationToken)
    {
        // A warm start runs no DDL at all: on Spanner every DDL statement, even a no-op IF NOT EXISTS,
        // is a slow, rate-limited schema change.
        var hasMigrationsTable = await RunAsync("read the schema version", async (connection, _, ct) =>
        {
            await using var command = NewCommand(connection, """
                SELECT count(*) FROM information_schema.tables
                WHERE table_schema = 'public' AND table_name = 'schema_migrations'
                """);
            return Convert.ToInt64(await command.ExecuteScalarAsync(ct), CultureInfo.InvariantCulture) > 0;
        }, cancellationToken);
        if (!hasMigrationsTable)
        {
            await ExecuteDdlAsync(PostgresSchema.CreateMigrationsTable, cancellationToken);
        }

        var applied = await RunAsync("read the schema version", async (connection, _, ct) =>
        {
            await using var command = NewCommand(connection, "SELECT version FROM schema_migrations");
            await using var reader = await command.ExecuteReaderAsync(ct);
            var versions = new HashSet<long>();
            while (await reader.ReadAsync(ct))
            {
                versions.Add(reader.GetInt64(0));
            }

            return versions;
        }, cancellationToken);

        foreach (var migration in PostgresSchema.Migrations)
        {
            if (applied.Contains(migration.Version))
            {
                continue;
            }

            Log.ApplyingMigration(logger, migration.Version, migration.Description, _target);
            foreach (var statement in migration.Statements)
            {
                await ExecuteDdlAsync(statement, cancellationToken);
            }

            // Another replica may have recorded the same version a moment ago; the DDL above was
            // idempotent, so its row and ours mean the same thing.
            await RunAsync("record the schema version", async (connection, _, ct) =>
            {
                await using var command = NewCommand(connection, """
                    INSERT INTO schema_migrations (version, description, applied_at)
                    VALUES (@version, @description, @applied_at)
                    ON CONFLICT (version) DO NOTHING
                    """);
                command.Parameters.Add(new NpgsqlParameter("version", NpgsqlDbType.Bigint) { Value = migration.Version });
                AddText(command, "description", migration.Description);
                AddTime(command, "applied_at", timeProvider.GetUtcNow());
                return await command.ExecuteNonQueryAsync(ct);
            }, cancellationToken);
        }

        var newest = applied.Count == 0 ? 0 : applied.Max();
        if (newest > PostgresSchema.LatestVersion)
        {
            // Rolling upgrades: a newer replica already migrated. Migrations only add, so carry on.
            Log.SchemaNewerThanCode(logger, newest, PostgresSchema.LatestVersion);
        }

        Log.Initialized(logger, _target, Math.Max(newest, PostgresSchema.LatestVersion));
    }

    public Task CheckAsync(CancellationToken cancellationToken) =>
        RunAsync("check the store", async (connection, _, ct) =>
        {
            await using var command = NewCommand(connection, "SELECT 1 FROM agents LIMIT 1");
            return await command.ExecuteScalarAsync(ct);
        }, cancellationToken);

    public Task<AgentRecord?> GetAsync(string agentId, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(agentId);
        return RunAsync("read an agent", (connection, _, ct) =>
            ReadAgentByIdAsync(connection, agentId, ct), cancellationToken);
    }

    public Task<AgentRecord?> FindAsync(string userId, string repoHash, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(userId);
        ArgumentNullException.ThrowIfNull(repoHash);
        return RunAsync("find an agent", (connection, _, ct) =>
            ReadAgentByKeyAsync(connection, userId, repoHash, ct), cancellationToken);
    }

    public Task<IReadOnlyList<AgentRecord>> ListAsync(CancellationToken cancellationToken) =>
        RunAsync<IReadOnlyList<AgentRecord>>("list agents", async (connection, _, ct) =>
        {
            await using var command = NewCommand(connection,
                $"SELECT {AgentColumns} FROM agents ORDER BY created_at, agent_id");
            return await ReadAgentsAsync(command, ct);
        }, cancellationToken);

    public Task<bool> TryInsertAsync(AgentRecord record, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(record);
        return RunAsync("insert an agent", async (connection, isRetryAfterLoss, ct) =>
        {
            await using var command = NewCommand(connection, $"""
                INSERT INTO agents ({AgentColumns})
                VALUES (@agent_id, @user_id, @repo_hash, @source_path, @backend, @backend_ref, @address, @state,
                        @created_at, @last_used_at, @lease_owner, @lease_expires_at)
                ON CONFLICT (user_id, repo_hash) DO NOTHING
                """);
            AddRecord(command, record);
            if (await command.ExecuteNonQueryAsync(ct) == 1)
            {
                return true;
            }

            if (isRetryAfterLoss)
            {
                // The first attempt may have committed before its connection died: the row is ours
                // if it carries our agent id (ids are unique for an agent's lifetime).
                var existing = await ReadAgentByKeyAsync(connection, record.UserId, record.RepoHash, ct);
                return existing?.AgentId == record.AgentId;
            }

            return false;
        }, cancellationToken);
    }

    public Task<bool> TryUpdateAsync(AgentRecord expected, AgentRecord updated, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(expected);
        ArgumentNullException.ThrowIfNull(updated);
        if (expected.AgentId != updated.AgentId || expected.UserId != updated.UserId || expected.RepoHash != updated.RepoHash)
        {
            // (user, repo) is the primary key, which Spanner cannot update in place; a different agent
            // for the same repo is a delete plus an insert.
            throw new ArgumentException(
                $"TryUpdateAsync cannot change an agent's identity ({expected.AgentId} {expected.UserId}/{expected.RepoHash} -> " +
                $"{updated.AgentId} {updated.UserId}/{updated.RepoHash}).", nameof(updated));
        }

        var ownerCondition = expected.LeaseOwner is null ? "lease_owner IS NULL" : "lease_owner = @expected_owner";
        return RunAsync("update an agent", async (connection, isRetryAfterLoss, ct) =>
        {
            await using var command = NewCommand(connection, $"""
                UPDATE agents
                SET source_path = @source_path, backend = @backend, backend_ref = @backend_ref, address = @address,
                    state = @state, created_at = @created_at, last_used_at = @last_used_at,
                    lease_owner = @lease_owner, lease_expires_at = @lease_expires_at
                WHERE user_id = @user_id AND repo_hash = @repo_hash AND agent_id = @agent_id
                  AND state = @expected_state AND {ownerCondition}
                """);
            AddRecord(command, updated);
            AddText(command, "expected_state", expected.State.ToString());
            if (expected.LeaseOwner is not null)
            {
                AddText(command, "expected_owner", expected.LeaseOwner);
            }

            if (await command.ExecuteNonQueryAsync(ct) == 1)
            {
                return true;
            }

            if (isRetryAfterLoss)
            {
                // The first attempt may have committed before its connection died.
                var current = await ReadAgentByIdAsync(connection, updated.AgentId, ct);
                return current is not null && current == AsStored(updated);
            }

            return false;
        }, cancellationToken);
    }

    public Task TouchAsync(string agentId, DateTimeOffset at, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(agentId);
        return RunAsync("touch an agent", async (connection, _, ct) =>
        {
            // The WHERE keeps LastUsedAt monotonic even when touches from several replicas cross.
            await using var command = NewCommand(connection,
                "UPDATE agents SET last_used_at = @at WHERE agent_id = @agent_id AND last_used_at < @at");
            AddText(command, "agent_id", agentId);
            AddTime(command, "at", at);
            return await command.ExecuteNonQueryAsync(ct);
        }, cancellationToken);
    }

    public Task<bool> DeleteAsync(string agentId, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(agentId);
        return RunAsync("delete an agent", async (connection, isRetryAfterLoss, ct) =>
        {
            await using var command = NewCommand(connection, "DELETE FROM agents WHERE agent_id = @agent_id");
            AddText(command, "agent_id", agentId);
            var deleted = await command.ExecuteNonQueryAsync(ct) == 1;

            // After a lost connection the first attempt may have been the one that deleted it; either
            // way the row is gone, which is what the caller asked for.
            return deleted || isRetryAfterLoss;
        }, cancellationToken);
    }

    public Task<bool> TryAcquireLeaseAsync(string name, string owner, TimeSpan duration, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentException.ThrowIfNullOrEmpty(owner);
        if (duration <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(duration), duration, "A lease must last longer than zero.");
        }

        return RunAsync("acquire a lease", async (connection, _, ct) =>
        {
            var now = timeProvider.GetUtcNow();
            var until = now + duration;

            // Two single-statement steps instead of one upsert, because Spanner's ON CONFLICT DO UPDATE
            // has no WHERE. Each step is atomic; together they give the lease to exactly one caller:
            // the first INSERT wins a fresh name, after that only the holder or, once expired, the one
            // UPDATE that still sees the expired row (the database serializes the row write).
            await using (var insert = NewCommand(connection, """
                INSERT INTO leases (lease_name, owner_id, expires_at) VALUES (@name, @owner, @until)
                ON CONFLICT (lease_name) DO NOTHING
                """))
            {
                AddText(insert, "name", name);
                AddText(insert, "owner", owner);
                AddTime(insert, "until", until);
                if (await insert.ExecuteNonQueryAsync(ct) == 1)
                {
                    return true;
                }
            }

            await using var update = NewCommand(connection, """
                UPDATE leases SET owner_id = @owner, expires_at = @until
                WHERE lease_name = @name AND (owner_id = @owner OR expires_at <= @now)
                """);
            AddText(update, "name", name);
            AddText(update, "owner", owner);
            AddTime(update, "until", until);
            AddTime(update, "now", now);
            return await update.ExecuteNonQueryAsync(ct) == 1;
        }, cancellationToken);
    }

    public Task<IReadOnlyList<LeaseRecord>> ListLeasesAsync(string prefix, CancellationToken cancellationToken) =>
        RunAsync<IReadOnlyList<LeaseRecord>>("list leases", async (connection, _, ct) =>
        {
            // substr, not LIKE (a prefix may hold LIKE's wildcards) nor a range (the database's collation orders it).
            await using var command = NewCommand(connection, """
                SELECT lease_name, owner_id, expires_at FROM leases
                WHERE substr(lease_name, 1, @length) = @prefix AND expires_at > @now
                ORDER BY lease_name
                """);
            AddText(command, "prefix", prefix);
            command.Parameters.Add(new NpgsqlParameter("length", NpgsqlDbType.Integer) { Value = prefix.Length });
            AddTime(command, "now", timeProvider.GetUtcNow());
            var rows = new List<LeaseRecord>();
            await using var reader = await command.ExecuteReaderAsync(ct);
            while (await reader.ReadAsync(ct))
            {
                rows.Add(new LeaseRecord(reader.GetString(0), reader.GetString(1), ReadTime(reader, 2)));
            }

            return rows;
        }, cancellationToken);

    public Task<bool> ReleaseLeaseAsync(string name, string owner, CancellationToken cancellationToken) =>
        RunAsync("release a lease", async (connection, _, ct) =>
        {
            await using var command = NewCommand(connection, "DELETE FROM leases WHERE lease_name = @name AND owner_id = @owner");
            AddText(command, "name", name);
            AddText(command, "owner", owner);
            return await command.ExecuteNonQueryAsync(ct) == 1;
        }, cancellationToken);

    public ValueTask DisposeAsync() => _dataSource.DisposeAsync();

    public void Dispose() => _dataSource.Dispose();

    private async Task ExecuteDdlAsync(string statement, CancellationToken cancellationToken)
    {
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                await RunAsync("create the schema", async (connection, _, ct) =>
                {
                    await using var command = NewCommand(connection, statement);
                    return await command.ExecuteNonQueryAsync(ct);
                }, cancellationToken);
                return;
            }
            catch (PostgresException ex) when (ex.SqlState is "42P07" or "42710" or "23505" && attempt < MaxDdlAttempts)
            {
                // Lost a creation race to another replica; IF NOT EXISTS sees its object next time.
                Log.DdlRace(logger, ex.SqlState, attempt);
                await Task.Delay(TimeSpan.FromMilliseconds(20 * attempt), cancellationToken);
            }
        }
    }

    private async Task<T> RunAsync<T>(
        string operation,
        Func<NpgsqlConnection, bool, CancellationToken, Task<T>> body,
        CancellationToken cancellationToken)
    {
        var retriedAfterLoss = false;
        for (var attempt = 1; ; attempt++)
        {
            var opened = false;
            try
            {
                await using var connection = await _dataSource.OpenConnectionAsync(cancellationToken);
                opened = true;
                return await body(connection, retriedAfterLoss, cancellationToken);
            }
            catch (PostgresException ex) when (ex.SqlState is "40001" or "40P01" && attempt < MaxConflictAttempts)
            {
                Log.SerializationConflict(logger, operation, ex.SqlState, attempt);
                await Task.Delay(TimeSpan.FromMilliseconds(Random.Shared.Next(5, 20) * attempt), cancellationToken);
            }
            catch (Exception ex) when (opened && !retriedAfterLoss && IsConnectionLoss(ex, cancellationToken))
            {
                // Only a connection that worked and then died is worth a second try: a fresh connect that
                // failed (refused, unknown host, timeout) would fail the same way again a moment later,
                // doubling the wait and the log lines for nothing.
                // The idle connections in the pool most likely died with this one; drop them so the
                // retry (and every request after it) opens a fresh connection.
                retriedAfterLoss = true;
                Log.ConnectionLost(logger, operation, _target, ex.Message);
                _dataSource.Clear();
            }
            catch (Exception ex) when (IsUnavailable(ex, cancellationToken))
            {
                throw new StateStoreUnavailableException(DescribeFailure(operation, ex), ex);
            }
        }
    }

    private static bool IsConnectionLoss(Exception ex, CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            return false;
        }

        return ex switch
        {
            PostgresException pg => pg.SqlState.StartsWith("08", StringComparison.Ordinal) || pg.SqlState is "57P01" or "57P02" or "57P03",
            // A timed-out statement may still be running; retrying it would only double the wait.
            NpgsqlException npgsql => !IsTimeout(npgsql),
            _ => false,
        };
    }

    private static bool IsUnavailable(Exception ex, CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested)
        {
            return false; // the caller's own cancellation surfaces as OperationCanceledException
        }

        return ex switch
        {
            PostgresException pg => IsUnavailableState(pg.SqlState),
            NpgsqlException or TimeoutException or SocketException => true,
            _ => false,
        };
    }

    private static bool IsUnavailableState(string sqlState) =>
        sqlState.StartsWith("08", StringComparison.Ordinal)      // connection exception
        || sqlState.StartsWith("53", StringComparison.Ordinal)   // insufficient resources (too many connections, disk full)
        || sqlState.StartsWith("28", StringComparison.Ordinal)   // authentication failed
        || sqlState is "57P01" or "57P02" or "57P03"             // admin/crash shutdown, cannot connect now
            or "57014"                                           // statement timeout
            or "3D000"                                           // database does not exist
            or "25006"                                           // read-only: connected to a standby after failover
            or "40001" or "40P01";                               // conflicts that outlasted the retries

    private static bool IsTimeout(Exception ex)
    {
        for (var e = ex; e is not null; e = e.InnerException)
        {
            if (e is TimeoutException)
            {
                return true;
            }
        }

        return false;
    }

    private string DescribeFailure(string operation, Exception ex)
    {
        string reason;
        string hint;
        if (ex is PostgresException pg)
        {
            reason = $"{pg.SqlState}: {pg.MessageText}";
            hint = pg.SqlState switch
            {
                var s when s.StartsWith("28", StringComparison.Ordinal) =>
                    "Check the user name and password in Orchestrator:Postgres:ConnectionString (or ConnectionStrings:rbs).",
                "3D000" => "Create the database, or fix Database= in Orchestrator:Postgres:ConnectionString (or ConnectionStrings:rbs).",
                _ => "Retry shortly; requests succeed again once the database is back.",
            };
        }
        else if (IsTimeout(ex))
        {
            var limits = new NpgsqlConnectionStringBuilder(_dataSource.ConnectionString);
            reason = $"no answer within the time limits: connect {limits.Timeout} s, statement {limits.CommandTimeout} s";
            hint = "Check that PostgreSQL (or PGAdapter) is reachable and not overloaded or blocked by locks; " +
                   "requests succeed again once it answers.";
        }
        else
        {
            var innermost = ex;
            while (innermost.InnerException is not null)
            {
                innermost = innermost.InnerException;
            }

            reason = innermost == ex ? ex.Message : $"{ex.Message} {innermost.Message}";
            hint = "Check that PostgreSQL (or PGAdapter) is running and reachable, and Orchestrator:Postgres:ConnectionString " +
                   "(or ConnectionStrings:rbs); requests succeed again once it is back.";
        }

        return $"PostgreSQL state store at {_target}: could not {operation} ({reason}). {hint}";
    }

    private static string DescribeTarget(string connectionString)
    {
        // Never the password: this text ends up in logs and in clients' error lines.
        var builder = new NpgsqlConnectionStringBuilder(connectionString);
        var host = string.IsNullOrEmpty(builder.Host) ? "localhost" : builder.Host;
        var database = string.IsNullOrEmpty(builder.Database) ? builder.Username ?? "" : builder.Database;
        return $"{host}:{builder.Port}/{database}" + (string.IsNullOrEmpty(builder.Username) ? "" : $" as {builder.Username}");
    }

    internal static NpgsqlDataSource BuildDataSource(PostgresStateStoreOptions options)
    {
        // NpgsqlConnectionStringBuilder.ContainsKey answers "is this a known keyword", so read what the
        // string itself spells out with the plain parser.
        var explicitKeys = new DbConnectionStringBuilder { ConnectionString = options.ConnectionString }.Keys
            .Cast<string>()
            .Select(key => key.Replace(" ", "", StringComparison.Ordinal).ToLowerInvariant())
            .ToHashSet();
        var builder = new NpgsqlDataSourceBuilder(options.ConnectionString);
        var connectionString = builder.ConnectionStringBuilder;
        if (!explicitKeys.Contains("timeout"))
        {
            connectionString.Timeout = ToWholeSeconds(options.ConnectTimeout);
        }

        if (!explicitKeys.Contains("commandtimeout"))
        {
            connectionString.CommandTimeout = ToWholeSeconds(options.CommandTimeout);
        }

        if (string.IsNullOrEmpty(connectionString.ApplicationName))
        {
            connectionString.ApplicationName = "rbs-orchestrator";
        }

        return builder.Build();
    }

    private static int ToWholeSeconds(TimeSpan value) => Math.Max(1, (int)Math.Ceiling(value.TotalSeconds));

    private static NpgsqlCommand NewCommand(NpgsqlConnection connection, string sql) => new(sql, connection);

    private static async Task<AgentRecord?> ReadAgentByIdAsync(NpgsqlConnection connection, string agentId, CancellationToken ct)
    {
        await using var command = NewCommand(connection, $"SELECT {AgentColumns} FROM agents WHERE agent_id = @agent_id");
        AddText(command, "agent_id", agentId);
        var rows = await ReadAgentsAsync(command, ct);
        return rows.Count == 0 ? null : rows[0];
    }

    private static async Task<AgentRecord?> ReadAgentByKeyAsync(NpgsqlConnection connection, string userId, string repoHash, CancellationToken ct)
    {
        await using var command = NewCommand(connection,
            $"SELECT {AgentColumns} FROM agents WHERE user_id = @user_id AND repo_hash = @repo_hash");
        AddText(command, "user_id", userId);
        AddText(command, "repo_hash", repoHash);
        var rows = await ReadAgentsAsync(command, ct);
        return rows.Count == 0 ? null : rows[0];
    }

    private static async Task<List<AgentRecord>> ReadAgentsAsync(NpgsqlCommand command, CancellationToken ct)
    {
        await using var reader = await command.ExecuteReaderAsync(ct);
        var rows = new List<AgentRecord>();
        while (await reader.ReadAsync(ct))
        {
            rows.Add(new AgentRecord(
                AgentId: reader.GetString(0),
                UserId: reader.GetString(1),
                RepoHash: reader.GetString(2),
                SourcePath: reader.GetString(3),
                Backend: reader.GetString(4),
                BackendRef: reader.GetString(5),
                Address: reader.GetString(6),
                State: ParseState(reader.GetString(7)),
                CreatedAt: ReadTime(reader, 8),
                LastUsedAt: ReadTime(reader, 9),
                LeaseOwner: reader.IsDBNull(10) ? null : reader.GetString(10),
                LeaseExpiresAt: reader.IsDBNull(11) ? null : ReadTime(reader, 11)));
        }

        return rows;
    }

    private static AgentState ParseState(string value) =>
        Enum.TryParse<AgentState>(value, ignoreCase: false, out var state) && Enum.IsDefined(state)
            ? state
            : throw new InvalidDataException($"Unknown agent state '{value}' in the agents table (written by a newer orchestrator?).");

    private static DateTimeOffset ReadTime(DbDataReader reader, int ordinal) =>
        new(DateTime.SpecifyKind(reader.GetDateTime(ordinal), DateTimeKind.Utc));

    /// <summary>The record as it reads back: timestamptz keeps microseconds, .NET ticks are 100 ns.</summary>
    private static AgentRecord AsStored(AgentRecord record) => record with
    {
        CreatedAt = TruncateToMicroseconds(record.CreatedAt),
        LastUsedAt = TruncateToMicroseconds(record.LastUsedAt),
        LeaseExpiresAt = record.LeaseExpiresAt is { } expires ? TruncateToMicroseconds(expires) : null,
    };

    private static DateTimeOffset TruncateToMicroseconds(DateTimeOffset value) =>
        new(value.UtcTicks - (value.UtcTicks % 10), TimeSpan.Zero);

    private static void AddRecord(NpgsqlCommand command, AgentRecord record)
    {
        AddText(command, "agent_id", record.AgentId);
        AddText(command, "user_id", record.UserId);
        AddText(command, "repo_hash", record.RepoHash);
        AddText(command, "source_path", record.SourcePath);
        AddText(command, "backend", record.Backend);
        AddText(command, "backend_ref", record.BackendRef);
        AddText(command, "address", record.Address);
        AddText(command, "state", record.State.ToString());
        AddTime(command, "created_at", record.CreatedAt);
        AddTime(command, "last_used_at", record.LastUsedAt);
        AddText(command, "lease_owner", record.LeaseOwner);
        AddTime(command, "lease_expires_at", record.LeaseExpiresAt);
    }

    private static void AddText(NpgsqlCommand command, string name, string? value) =>
        command.Parameters.Add(new NpgsqlParameter(name, NpgsqlDbType.Text) { Value = (object?)value ?? DBNull.Value });

    private static void AddTime(NpgsqlCommand command, string name, DateTimeOffset? value) =>
        command.Parameters.Add(new NpgsqlParameter(name, NpgsqlDbType.TimestampTz)
        {
            // Npgsql writes timestamptz from UTC DateTimes only.
            Value = value is { } v ? v.UtcDateTime : DBNull.Value,
        });

    private static partial class Log
    {
        [LoggerMessage(EventId = 4101, Level = LogLevel.Information, Message = "Applying state schema migration {Version} ({Description}) to {Target}")]
        public static partial void ApplyingMigration(ILogger logger, long version, string description, string target);

        [LoggerMessage(EventId = 4102, Level = LogLevel.Warning, Message = "State schema version {DatabaseVersion} is newer than this orchestrator's {CodeVersion}; continuing (migrations only add)")]
        public static partial void SchemaNewerThanCode(ILogger logger, long databaseVersion, long codeVersion);

        [LoggerMessage(EventId = 4103, Level = LogLevel.Information, Message = "PostgreSQL state store ready at {Target}, schema version {Version}")]
        public static partial void Initialized(ILogger logger, string target, long version);

        [LoggerMessage(EventId = 4104, Level = LogLevel.Warning, Message = "Connection to {Target} failed while trying to {Operation} ({Reason}); retrying once on a fresh connection")]
        public static partial void ConnectionLost(ILogger logger, string operation, string target, string reason);

        [LoggerMessage(EventId = 4105, Level = LogLevel.Debug, Message = "Conflict {SqlState} while trying to {Operation} (attempt {Attempt}); retrying")]
        public static partial void SerializationConflict(ILogger logger, string operation, string sqlState, int attempt);

        [LoggerMessage(EventId = 4106, Level = LogLevel.Debug, Message = "Schema creation raced another replica ({SqlState}, attempt {Attempt}); retrying")]
        public static partial void DdlRace(ILogger logger, string sqlState, int attempt);
    }
}
