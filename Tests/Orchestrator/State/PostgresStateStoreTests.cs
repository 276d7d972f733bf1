using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Npgsql;
using Rbs.Orchestrator.State;
using Rbs.Orchestrator.State.Postgres;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Orchestrator.State;

/// <summary>
/// PostgreSQL-specific behaviour on a real server: start-up races between replicas, the schema, and
/// faults (unreachable, lost while serving, killed backends, bad configuration).
/// </summary>
public sealed class PostgresStateStoreTests(PostgresServerFixture postgres, ITestOutputHelper output)
    : IClassFixture<PostgresServerFixture>, IAsyncLifetime
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    private readonly List<PostgresStateStore> _stores = [];

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var store in _stores)
        {
            await store.DisposeAsync();
        }
    }

    [Fact]
    public async Task EightReplicasInitializingAtOnceOnAFreshDatabase_AllSucceedWithOneCompleteSchema()
    {
        var (database, connectionString) = await postgres.CreateDatabaseAsync().WaitAsync(Timeout);
        var replicas = Enumerable.Range(0, 8).Select(_ => NewStore(connectionString)).ToList();

        await Task.WhenAll(replicas.Select(r => Task.Run(() => r.InitializeAsync(CancellationToken.None)))).WaitAsync(Timeout);

        Assert.Equal(
            string.Join(",", PostgresSchema.Migrations.Select(m => m.Version)),
            await postgres.ScalarAsync("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations", database));
        Assert.Equal(
            "agents.address,agents.agent_id,agents.backend,agents.backend_ref,agents.created_at,agents.last_used_at," +
            "agents.lease_expires_at,agents.lease_owner,agents.repo_hash,agents.source_path,agents.state,agents.user_id," +
            "leases.expires_at,leases.lease_name,leases.owner_id," +
            "schema_migrations.applied_at,schema_migrations.description,schema_migrations.version",
            await postgres.ScalarAsync(
                "SELECT string_agg(table_name || '.' || column_name, ',' ORDER BY table_name, column_name) " +
                "FROM information_schema.columns WHERE table_schema = 'public'", database));
        Assert.Equal(
            "agents_agent_id_key,agents_pkey,leases_pkey,schema_migrations_pkey",
            await postgres.ScalarAsync(
                "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'public'", database));

        // Every replica can serve right away, and they see one another's rows.
        var record = NewRecord();
        Assert.True(await replicas[3].TryInsertAsync(record, CancellationToken.None).WaitAsync(Timeout));
        Assert.Equal(record, await replicas[7].GetAsync(record.AgentId, CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task DatabaseUnreachableAtStartUp_ThrowsUnavailableWithAnActionableMessage()
    {
        var closedPort = ClosedLoopbackPort();
        var store = NewStore($"Host=127.0.0.1;Port={closedPort};Username=rbs;Password=secret-pw;Database=rbs");

        var ex = await Assert.ThrowsAsync<StateStoreUnavailableException>(
            () => store.InitializeAsync(CancellationToken.None).WaitAsync(Timeout));
        output.WriteLine(ex.Message);

        Assert.StartsWith($"PostgreSQL state store at 127.0.0.1:{closedPort}/rbs as rbs: could not ", ex.Message, StringComparison.Ordinal);
        Assert.Contains("Connection refused", ex.Message, StringComparison.Ordinal);
        Assert.True(ex.IsTransient);
        Assert.Null(ex.SqlState);
        Assert.IsAssignableFrom<System.Data.Common.DbException>(ex); // what GetServer maps to Unavailable
        Assert.Contains("Orchestrator:Postgres:ConnectionString", ex.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("secret-pw", ex.Message, StringComparison.Ordinal);
        await Assert.ThrowsAsync<StateStoreUnavailableException>(
            () => store.GetAsync("a00000000000000000000", CancellationToken.None).WaitAsync(Timeout));
        await Assert.ThrowsAsync<StateStoreUnavailableException>(
            () => store.TryAcquireLeaseAsync("reaper", "r1", TimeSpan.FromSeconds(5), CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task MissingDatabaseOrWrongPassword_ThrowsUnavailableNamingTheFix()
    {
        var missing = NewStore(new NpgsqlConnectionStringBuilder(postgres.ConnectionString) { Database = "rbs_test_does_not_exist" }.ConnectionString);
        var missingEx = await Assert.ThrowsAsync<StateStoreUnavailableException>(
            () => missing.InitializeAsync(CancellationToken.None).WaitAsync(Timeout));
        output.WriteLine(missingEx.Message);
        Assert.Contains("3D000", missingEx.Message, StringComparison.Ordinal);
        Assert.Equal("3D000", missingEx.SqlState);
        Assert.Contains("Create the database", missingEx.Message, StringComparison.Ordinal);

        var badPassword = NewStore(new NpgsqlConnectionStringBuilder(postgres.ConnectionString) { Password = "wrong-password" }.ConnectionString);
        var authEx = await Assert.ThrowsAsync<StateStoreUnavailableException>(
            () => badPassword.InitializeAsync(CancellationToken.None).WaitAsync(Timeout));
        output.WriteLine(authEx.Message);
        Assert.Contains("28P01", authEx.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("wrong-password", authEx.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task DatabaseLostWhileServing_OperationsThrowUnavailable_ThenTheSameInstanceRecovers()
    {
        await using var proxy = new TcpProxy(await PostgresEndPointAsync());
        proxy.Start();
        var store = NewStore(new NpgsqlConnectionStringBuilder(postgres.ConnectionString) { Host = "127.0.0.1", Port = proxy.Port }.ConnectionString);
        await store.InitializeAsync(CancellationToken.None).WaitAsync(Timeout);
        var record = NewRecord();
        Assert.True(await store.TryInsertAsync(record, CancellationToken.None).WaitAsync(Timeout));

        await proxy.StopAsync();

        var ready = record with { State = AgentState.Ready, Address = "http://127.0.0.1:1", LeaseOwner = null, LeaseExpiresAt = null };
        Func<Task>[] operations =
        [
            () => store.GetAsync(record.AgentId, CancellationToken.None),
            () => store.FindAsync(record.UserId, record.RepoHash, CancellationToken.None),
            () => store.ListAsync(CancellationToken.None),
            () => store.TryInsertAsync(NewRecord(), CancellationToken.None),
            () => store.TryUpdateAsync(record, ready, CancellationToken.None),
            () => store.TouchAsync(record.AgentId, record.LastUsedAt.AddMinutes(1), CancellationToken.None),
            () => store.DeleteAsync(record.AgentId, CancellationToken.None),
            () => store.TryAcquireLeaseAsync("reaper", "r1", TimeSpan.FromSeconds(5), CancellationToken.None),
        ];
        foreach (var operation in operations)
        {
            var ex = await Assert.ThrowsAsync<StateStoreUnavailableException>(() => operation().WaitAsync(Timeout));
            output.WriteLine(ex.Message);
        }

        proxy.Start(); // same port: the database is back

        Assert.Equal(record, await store.GetAsync(record.AgentId, CancellationToken.None).WaitAsync(Timeout));
        Assert.True(await store.TryUpdateAsync(record, ready, CancellationToken.None).WaitAsync(Timeout));
        Assert.Equal(ready, await store.GetAsync(record.AgentId, CancellationToken.None).WaitAsync(Timeout));
        Assert.True(await store.TryAcquireLeaseAsync("reaper-" + record.AgentId, "r1", TimeSpan.FromSeconds(5), CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task CommitAcknowledgementLost_TheRetryReportsWhatActuallyHappened()
    {
        await using var proxy = new TcpProxy(await PostgresEndPointAsync());
        proxy.Start();
        // Cleartext, so the proxy can see the command tags in the server's replies.
        var store = NewStore(new NpgsqlConnectionStringBuilder(postgres.ConnectionString)
        {
            Host = "127.0.0.1",
            Port = proxy.Port,
            SslMode = SslMode.Disable,
        }.ConnectionString);
        await store.InitializeAsync(CancellationToken.None).WaitAsync(Timeout);
        var record = NewRecord();

        // Each write commits on the server, its reply is lost, and the store retries on a new connection:
        // the retry must report the outcome of the committed first attempt, not its own no-op.
        proxy.LoseReplyContaining = "INSERT 0 1";
        Assert.True(await store.TryInsertAsync(record, CancellationToken.None).WaitAsync(Timeout));
        Assert.Equal(record, await store.GetAsync(record.AgentId, CancellationToken.None).WaitAsync(Timeout));

        var ready = record with { State = AgentState.Ready, Address = "http://127.0.0.1:3", LeaseOwner = null, LeaseExpiresAt = null };
        proxy.LoseReplyContaining = "UPDATE 1";
        Assert.True(await store.TryUpdateAsync(record, ready, CancellationToken.None).WaitAsync(Timeout));
        Assert.Equal(ready, await store.GetAsync(record.AgentId, CancellationToken.None).WaitAsync(Timeout));

        proxy.LoseReplyContaining = "DELETE 1";
        Assert.True(await store.DeleteAsync(record.AgentId, CancellationToken.None).WaitAsync(Timeout));
        Assert.Null(await store.GetAsync(record.AgentId, CancellationToken.None).WaitAsync(Timeout));

        Assert.Equal(3, proxy.LostReplies);

        // And a genuine loser still loses after a lost reply: the retry must not claim someone else's row.
        var winner = NewRecord();
        Assert.True(await store.TryInsertAsync(winner, CancellationToken.None).WaitAsync(Timeout));
        proxy.LoseReplyContaining = "INSERT 0 0";
        Assert.False(await store.TryInsertAsync(NewRecord() with { UserId = winner.UserId, RepoHash = winner.RepoHash }, CancellationToken.None).WaitAsync(Timeout));
        Assert.Equal(4, proxy.LostReplies);
    }

    [Fact]
    public async Task BackendsTerminated_TheNextOperationsSucceedOnFreshConnections()
    {
        var store = NewStore(postgres.ConnectionString);
        await store.InitializeAsync(CancellationToken.None).WaitAsync(Timeout);
        var record = NewRecord();
        Assert.True(await store.TryInsertAsync(record, CancellationToken.None).WaitAsync(Timeout));
        // Fill the pool with several idle connections, all of which are about to die.
        await Task.WhenAll(Enumerable.Range(0, 6).Select(_ => Task.Run(() => store.ListAsync(CancellationToken.None)))).WaitAsync(Timeout);

        var ready = record with { State = AgentState.Ready, Address = "http://127.0.0.1:2", LeaseOwner = null, LeaseExpiresAt = null };
        var steps = new (string Name, Func<Task<bool>> Run)[]
        {
            ("get", async () => await store.GetAsync(record.AgentId, CancellationToken.None) == record),
            ("update", () => store.TryUpdateAsync(record, ready, CancellationToken.None)),
            ("touch", async () =>
            {
                await store.TouchAsync(record.AgentId, ready.LastUsedAt.AddMinutes(1), CancellationToken.None);
                return (await store.GetAsync(record.AgentId, CancellationToken.None))!.LastUsedAt == ready.LastUsedAt.AddMinutes(1);
            }),
            ("insert", () => store.TryInsertAsync(NewRecord(), CancellationToken.None)),
            ("lease", () => store.TryAcquireLeaseAsync("lease-" + record.AgentId, "r1", TimeSpan.FromSeconds(5), CancellationToken.None)),
            ("delete", () => store.DeleteAsync(record.AgentId, CancellationToken.None)),
        };

        foreach (var (name, run) in steps)
        {
            var killed = await TerminateBackendsAsync();
            output.WriteLine($"terminated {killed} backend(s) before {name}");
            Assert.True(killed > 0, "the store should have held pooled connections to kill");
            Assert.True(await run().WaitAsync(Timeout), name);
        }
    }

    [Fact]
    public async Task DatabaseHangs_CallsFailAfterTheCommandTimeoutInsteadOfHanging_ThenRecover()
    {
        var store = new PostgresStateStore(
            Options.Create(new PostgresStateStoreOptions { ConnectionString = postgres.ConnectionString, CommandTimeout = TimeSpan.FromSeconds(1) }),
            TimeProvider.System,
            new TestOutputLogger<PostgresStateStore>(output));
        _stores.Add(store);
        await store.InitializeAsync(CancellationToken.None).WaitAsync(Timeout);
        var record = NewRecord();
        Assert.True(await store.TryInsertAsync(record, CancellationToken.None).WaitAsync(Timeout));

        // Another session holds an exclusive lock on the table: every statement of the store blocks.
        await using var blocker = new NpgsqlConnection(postgres.ConnectionString);
        await blocker.OpenAsync();
        await using var transaction = await blocker.BeginTransactionAsync();
        await using (var lockCommand = new NpgsqlCommand("LOCK TABLE agents IN ACCESS EXCLUSIVE MODE", blocker, transaction))
        {
            await lockCommand.ExecuteNonQueryAsync();
        }

        var ex = await Assert.ThrowsAsync<StateStoreUnavailableException>(
            () => store.GetAsync(record.AgentId, CancellationToken.None).WaitAsync(Timeout));
        output.WriteLine(ex.Message);
        Assert.Contains("could not read an agent (no answer within the time limits: connect 5 s, statement 1 s)", ex.Message, StringComparison.Ordinal);

        await transaction.RollbackAsync();
        Assert.Equal(record, await store.GetAsync(record.AgentId, CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task TryUpdate_CannotChangeTheAgentsIdentity()
    {
        var store = NewStore(postgres.ConnectionString);
        await store.InitializeAsync(CancellationToken.None).WaitAsync(Timeout);
        var record = NewRecord();
        Assert.True(await store.TryInsertAsync(record, CancellationToken.None).WaitAsync(Timeout));

        await Assert.ThrowsAsync<ArgumentException>(
            () => store.TryUpdateAsync(record, record with { RepoHash = "other" }, CancellationToken.None));
        await Assert.ThrowsAsync<ArgumentException>(
            () => store.TryUpdateAsync(record, record with { AgentId = "a99999999999999999999" }, CancellationToken.None));
        Assert.Equal(record, await store.GetAsync(record.AgentId, CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task AddPostgresStateStore_ReadsConnectionStringsRbs_AndServesAsTheStateStore()
    {
        var configuration = new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionStrings:rbs"] = postgres.ConnectionString })
            .Build();
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(configuration);
        services.AddSingleton(typeof(ILogger<>), typeof(NullLogger<>));
        services.AddPostgresStateStore(configuration);
        await using var provider = services.BuildServiceProvider(validateScopes: true);

        Assert.True(configuration.HasPostgresStateStore());
        var store = provider.GetRequiredService<IStateStore>();
        Assert.IsType<PostgresStateStore>(store);
        await store.InitializeAsync(CancellationToken.None).WaitAsync(Timeout);
        var record = NewRecord();
        Assert.True(await store.TryInsertAsync(record, CancellationToken.None).WaitAsync(Timeout));
        Assert.Equal(record, await store.GetAsync(record.AgentId, CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public void AddPostgresStateStore_WithoutConnectionString_FailsValidationNamingTheKeys()
    {
        var configuration = new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["Orchestrator:Postgres:CommandTimeout"] = "00:00:00" })
            .Build();
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(configuration);
        services.AddPostgresStateStore(configuration);
        using var provider = services.BuildServiceProvider();

        Assert.False(configuration.HasPostgresStateStore());
        var ex = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IOptions<PostgresStateStoreOptions>>().Value);
        output.WriteLine(ex.Message);
        Assert.Contains("Orchestrator:Postgres:ConnectionString", ex.Message, StringComparison.Ordinal);
        Assert.Contains("ConnectionStrings:rbs", ex.Message, StringComparison.Ordinal);
        Assert.Contains("CommandTimeout", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Timeouts_ComeFromOptionsUnlessTheConnectionStringSetsThem()
    {
        await using (var defaults = PostgresStateStore.BuildDataSource(new PostgresStateStoreOptions { ConnectionString = "Host=db;Database=rbs" }))
        {
            var built = new NpgsqlConnectionStringBuilder(defaults.ConnectionString);
            Assert.Equal(5, built.Timeout);
            Assert.Equal(10, built.CommandTimeout);
            Assert.Equal("rbs-orchestrator", built.ApplicationName);
        }

        await using var explicitOnes = PostgresStateStore.BuildDataSource(new PostgresStateStoreOptions
        {
            ConnectionString = "Host=db;Database=rbs;Timeout=2;Command Timeout=3;Application Name=mine",
            CommandTimeout = TimeSpan.FromSeconds(42),
        });
        var kept = new NpgsqlConnectionStringBuilder(explicitOnes.ConnectionString);
        Assert.Equal(2, kept.Timeout);
        Assert.Equal(3, kept.CommandTimeout);
        Assert.Equal("mine", kept.ApplicationName);
    }

    private PostgresStateStore NewStore(string connectionString)
    {
        var store = new PostgresStateStore(
            Options.Create(new PostgresStateStoreOptions { ConnectionString = connectionString }),
            TimeProvider.System,
            new TestOutputLogger<PostgresStateStore>(output));
        _stores.Add(store);
        return store;
    }

    private static AgentRecord NewRecord()
    {
        var now = new DateTimeOffset(2026, 11, 27, 12, 0, 0, TimeSpan.Zero);
        return new AgentRecord(
            "a" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(10)),
            "user-" + Guid.NewGuid().ToString("N")[..8],
            Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32)),
            "/src/repo",
            "process",
            "",
            "",
            AgentState.Allocating,
            now,
            now,
            "replica-a",
            now.AddSeconds(30));
    }

    /// <summary>Kills every session on this class's database, as a server restart or failover would.</summary>
    private async Task<long> TerminateBackendsAsync() =>
        (long)(await postgres.ScalarAsync(
            $"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{postgres.DatabaseName}' AND pid <> pg_backend_pid()",
            "postgres"))!;

    private async Task<IPEndPoint> PostgresEndPointAsync()
    {
        var builder = new NpgsqlConnectionStringBuilder(postgres.AdminConnectionString);
        var addresses = await Dns.GetHostAddressesAsync(builder.Host!);
        return new IPEndPoint(addresses.First(a => a.AddressFamily == AddressFamily.InterNetwork), builder.Port);
    }

    private static int ClosedLoopbackPort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
