using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;
using Rbs.Orchestrator.Hosting;
using Rbs.Orchestrator.State;

namespace Rbs.Tests.Orchestrator;

public sealed class SqliteStateStoreTests : IDisposable
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(20);

    private readonly string _root = Directory.CreateTempSubdirectory("rbs-sqlite-test-").FullName;
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero));

    private string DatabasePath => Path.Combine(_root, "nested", "orchestrator.db");

    public void Dispose()
    {
        SqliteConnection.ClearAllPools();
        Directory.Delete(_root, recursive: true);
    }

    [Fact]
    public async Task InitializeCreatesTheFileAndIsIdempotentAcrossInstances()
    {
        var first = await CreateStoreAsync();
        var second = await CreateStoreAsync();
        await first.InitializeAsync(CancellationToken.None).WaitAsync(s_timeout);

        Assert.True(File.Exists(DatabasePath));
        Assert.True(await first.TryInsertAsync(Allocating("a00000000000000000001", "u", "r"), CancellationToken.None).WaitAsync(s_timeout));
        // A second store on the same file (another connection, as another process would have) sees the row.
        Assert.NotNull(await second.GetAsync("a00000000000000000001", CancellationToken.None).WaitAsync(s_timeout));
    }

    [Fact]
    public async Task InitializeRefusesASchemaFromTheFuture()
    {
        await CreateStoreAsync();
        await using (var connection = new SqliteConnection($"Data Source={DatabasePath}"))
        {
            await connection.OpenAsync();
            await using var command = connection.CreateCommand();
            command.CommandText = "INSERT INTO schema_migrations (version, applied_at_ms) VALUES (99, 0);";
            await command.ExecuteNonQueryAsync();
        }

        var store = CreateUninitializedStore();
        var error = await Assert.ThrowsAsync<InvalidOperationException>(() => store.InitializeAsync(CancellationToken.None).WaitAsync(s_timeout));
        Assert.Contains("schema version 99", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task InsertAllowsOneRowPerUserAndRepo()
    {
        var store = await CreateStoreAsync();
        var first = Allocating("a00000000000000000001", "alice", "repo");

        Assert.True(await store.TryInsertAsync(first, CancellationToken.None).WaitAsync(s_timeout));
        Assert.False(await store.TryInsertAsync(Allocating("a00000000000000000002", "alice", "repo"), CancellationToken.None).WaitAsync(s_timeout));
        Assert.True(await store.TryInsertAsync(Allocating("a00000000000000000003", "bob", "repo"), CancellationToken.None).WaitAsync(s_timeout));

        Assert.Equal(first, await store.FindAsync("alice", "repo", CancellationToken.None).WaitAsync(s_timeout));
        Assert.Equal(2, (await store.ListAsync(CancellationToken.None).WaitAsync(s_timeout)).Count);
    }

    [Fact]
    public async Task ConcurrentInsertsFromSeveralConnectionsHaveExactlyOneWinner()
    {
        var stores = new[] { await CreateStoreAsync(), await CreateStoreAsync(), await CreateStoreAsync() };
        var attempts = Enumerable.Range(0, 30).Select(i =>
            Task.Run(() => stores[i % stores.Length].TryInsertAsync(Allocating($"a{i:D20}", "alice", "repo"), CancellationToken.None)));

        var results = await Task.WhenAll(attempts).WaitAsync(s_timeout);

        Assert.Equal(1, results.Count(won => won));
        Assert.Single(await stores[0].ListAsync(CancellationToken.None).WaitAsync(s_timeout));
    }

    [Fact]
    public async Task UpdateIsOptimisticOnStateAndLeaseOwner()
    {
        var store = await CreateStoreAsync();
        var allocating = Allocating("a00000000000000000001", "alice", "repo");
        await store.TryInsertAsync(allocating, CancellationToken.None).WaitAsync(s_timeout);
        var ready = allocating with
        {
            State = AgentState.Ready,
            BackendRef = "1234",
            Address = "http://127.0.0.1:4000",
            LeaseOwner = null,
            LeaseExpiresAt = null,
        };

        Assert.False(await store.TryUpdateAsync(allocating with { LeaseOwner = "someone-else" }, ready, CancellationToken.None).WaitAsync(s_timeout));
        Assert.True(await store.TryUpdateAsync(allocating, ready, CancellationToken.None).WaitAsync(s_timeout));
        // The same transition again is stale: the row is Ready now.
        Assert.False(await store.TryUpdateAsync(allocating, ready with { Address = "http://127.0.0.1:5000" }, CancellationToken.None).WaitAsync(s_timeout));

        Assert.Equal(ready, await store.GetAsync(ready.AgentId, CancellationToken.None).WaitAsync(s_timeout));
    }

    [Fact]
    public async Task TouchNeverMovesLastUsedBackwards()
    {
        var store = await CreateStoreAsync();
        var row = Allocating("a00000000000000000001", "alice", "repo");
        await store.TryInsertAsync(row, CancellationToken.None).WaitAsync(s_timeout);

        await store.TouchAsync(row.AgentId, row.LastUsedAt.AddMinutes(5), CancellationToken.None).WaitAsync(s_timeout);
        await store.TouchAsync(row.AgentId, row.LastUsedAt.AddMinutes(1), CancellationToken.None).WaitAsync(s_timeout);

        var stored = await store.GetAsync(row.AgentId, CancellationToken.None).WaitAsync(s_timeout);
        Assert.Equal(row.LastUsedAt.AddMinutes(5), stored!.LastUsedAt);
    }

    [Fact]
    public async Task DeleteRemovesOnlyThatAgentOnce()
    {
        var store = await CreateStoreAsync();
        await store.TryInsertAsync(Allocating("a00000000000000000001", "alice", "one"), CancellationToken.None).WaitAsync(s_timeout);
        await store.TryInsertAsync(Allocating("a00000000000000000002", "alice", "two"), CancellationToken.None).WaitAsync(s_timeout);

        Assert.True(await store.DeleteAsync("a00000000000000000001", CancellationToken.None).WaitAsync(s_timeout));
        Assert.False(await store.DeleteAsync("a00000000000000000001", CancellationToken.None).WaitAsync(s_timeout));

        Assert.Null(await store.FindAsync("alice", "one", CancellationToken.None).WaitAsync(s_timeout));
        Assert.NotNull(await store.FindAsync("alice", "two", CancellationToken.None).WaitAsync(s_timeout));
        // The freed (user, repo) can be allocated again.
        Assert.True(await store.TryInsertAsync(Allocating("a00000000000000000003", "alice", "one"), CancellationToken.None).WaitAsync(s_timeout));
    }

    [Fact]
    public async Task LeaseIsExclusiveUntilItExpiresAndRenewable()
    {
        var store = await CreateStoreAsync();
        var duration = TimeSpan.FromSeconds(30);

        Assert.True(await store.TryAcquireLeaseAsync("reaper", "replica-a", duration, CancellationToken.None).WaitAsync(s_timeout));
        Assert.False(await store.TryAcquireLeaseAsync("reaper", "replica-b", duration, CancellationToken.None).WaitAsync(s_timeout));
        Assert.True(await store.TryAcquireLeaseAsync("other", "replica-b", duration, CancellationToken.None).WaitAsync(s_timeout));

        _time.Advance(TimeSpan.FromSeconds(20));
        Assert.True(await store.TryAcquireLeaseAsync("reaper", "replica-a", duration, CancellationToken.None).WaitAsync(s_timeout));

        // Renewed at t=20 s until t=50 s: still held at t=45 s, free at t=51 s.
        _time.Advance(TimeSpan.FromSeconds(25));
        Assert.False(await store.TryAcquireLeaseAsync("reaper", "replica-b", duration, CancellationToken.None).WaitAsync(s_timeout));
        _time.Advance(TimeSpan.FromSeconds(6));
        Assert.True(await store.TryAcquireLeaseAsync("reaper", "replica-b", duration, CancellationToken.None).WaitAsync(s_timeout));
        Assert.False(await store.TryAcquireLeaseAsync("reaper", "replica-a", duration, CancellationToken.None).WaitAsync(s_timeout));
    }

    private SqliteStateStore CreateUninitializedStore() =>
        new(Options.Create(new OrchestratorOptions { StatePath = DatabasePath }), _time);

    private async Task<SqliteStateStore> CreateStoreAsync()
    {
        var store = CreateUninitializedStore();
        await store.InitializeAsync(CancellationToken.None).WaitAsync(s_timeout);
        return store;
    }

    private AgentRecord Allocating(string agentId, string userId, string repoHash)
    {
        var now = _time.GetUtcNow();
        return new AgentRecord(
            agentId, userId, repoHash, "/src/" + repoHash, "process", string.Empty, string.Empty,
            AgentState.Allocating, now, now, "replica-a", now.AddSeconds(40));
    }
}
