using Npgsql;

namespace Rbs.Tests.Orchestrator.State;

/// <summary>
/// A real PostgreSQL server for the state-store tests: the one named by <c>RBS_TEST_POSTGRES</c>
/// (default: the <c>rbs</c> role that <c>e2e/setup_postgres.sh</c> creates on 127.0.0.1:5432).
/// Creates a fresh database per test class (<c>rbs_test_&lt;guid&gt;</c>), and more on request, and drops
/// them all afterwards. Not reachable → every test of the class fails with how to start it; never skipped.
/// </summary>
public sealed class PostgresServerFixture : IAsyncLifetime
{
    public const string EnvironmentVariable = "RBS_TEST_POSTGRES";
    public const string DefaultConnectionString = "Host=127.0.0.1;Port=5432;Username=rbs;Password=rbs;Database=postgres";

    private readonly List<string> _databases = [];

    public string AdminConnectionString { get; } =
        Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 } configured ? configured : DefaultConnectionString;

    /// <summary>The test class's own database.</summary>
    public string ConnectionString { get; private set; } = "";

    public string DatabaseName { get; private set; } = "";

    public async Task InitializeAsync()
    {
        try
        {
            await using var connection = new NpgsqlConnection(AdminConnectionString);
            await connection.OpenAsync().WaitAsync(TimeSpan.FromSeconds(20));
        }
        catch (Exception ex) when (ex is NpgsqlException or TimeoutException or System.Net.Sockets.SocketException)
        {
            throw new InvalidOperationException(
                $"PostgreSQL is not reachable with {EnvironmentVariable}='{Redacted(AdminConnectionString)}' ({ex.Message}). " +
                "Start PostgreSQL: `pg_ctlcluster 15 main start`, or run `e2e/setup_postgres.sh` (starts the cluster and " +
                "creates the rbs role it uses); .ci/run does this.", ex);
        }

        (DatabaseName, ConnectionString) = await CreateDatabaseAsync();
    }

    /// <summary>Creates another empty database; dropped with the fixture.</summary>
    public async Task<(string Name, string ConnectionString)> CreateDatabaseAsync()
    {
        var name = "rbs_test_" + Guid.NewGuid().ToString("N");
        await using (var connection = new NpgsqlConnection(AdminConnectionString))
        {
            await connection.OpenAsync();
            // template0 accepts no connections, so concurrent CREATE DATABASEs never trip over
            // "source database is being accessed by other users".
            await using var command = new NpgsqlCommand($"CREATE DATABASE \"{name}\" TEMPLATE template0", connection);
            await command.ExecuteNonQueryAsync();
        }

        lock (_databases)
        {
            _databases.Add(name);
        }

        return (name, ConnectionStringFor(name));
    }

    public string ConnectionStringFor(string database) =>
        new NpgsqlConnectionStringBuilder(AdminConnectionString) { Database = database, MaxPoolSize = 10 }.ConnectionString;

    /// <summary>Runs one statement as the admin role against <paramref name="database"/> (default: the class's).</summary>
    public async Task<object?> ScalarAsync(string sql, string? database = null)
    {
        await using var connection = new NpgsqlConnection(
            new NpgsqlConnectionStringBuilder(AdminConnectionString) { Database = database ?? DatabaseName, Pooling = false }.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql, connection);
        return await command.ExecuteScalarAsync();
    }

    public async Task DisposeAsync()
    {
        string[] databases;
        lock (_databases)
        {
            databases = [.. _databases];
        }

        if (databases.Length == 0)
        {
            return;
        }

        await using var connection = new NpgsqlConnection(AdminConnectionString);
        await connection.OpenAsync();
        foreach (var name in databases)
        {
            await using var command = new NpgsqlCommand($"DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)", connection);
            await command.ExecuteNonQueryAsync();
        }
    }

    private static string Redacted(string connectionString)
    {
        try
        {
            var builder = new NpgsqlConnectionStringBuilder(connectionString);
            if (!string.IsNullOrEmpty(builder.Password))
            {
                builder.Password = "***";
            }

            return builder.ConnectionString;
        }
        catch (ArgumentException)
        {
            return "(unparseable)";
        }
    }
}
