using System.Security.Cryptography;
using Microsoft.Extensions.Time.Testing;
using Rbs.Orchestrator.State;

namespace Rbs.Tests.Orchestrator.State;

/// <summary>
/// The behaviour every <see cref="IStateStore"/> must have, whatever database is behind it. A store's
/// test class derives from this and creates an initialized store on a database of its own.
/// Tests share the derived class's database, so each one uses fresh user ids, repo hashes and lease names.
/// </summary>
public abstract class StateStoreContractTests(ITestOutputHelper output) : IAsyncLifetime
{
    protected static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    private readonly List<object> _stores = [];

    protected ITestOutputHelper Output { get; } = output;

    /// <summary>Whole milliseconds, so every store's timestamp precision round-trips it exactly.</summary>
    protected FakeTimeProvider Clock { get; } = new(new DateTimeOffset(2026, 11, 27, 12, 0, 0, TimeSpan.Zero));

    /// <summary>
    /// A new store instance on this class's database, using <paramref name="timeProvider"/> for lease
    /// expiry, with <see cref="IStateStore.InitializeAsync"/> done. Several instances on one database
    /// stand for several orchestrator replicas.
    /// </summary>
    private protected abstract Task<IStateStore> CreateStoreAsync(TimeProvider timeProvider);

    private protected async Task<IStateStore> NewStoreAsync()
    {
        var store = await CreateStoreAsync(Clock).WaitAsync(Timeout);
        _stores.Add(store);
        return store;
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var store in _stores)
        {
            if (store is IAsyncDisposable disposable)
            {
                await disposable.DisposeAsync();
            }
        }
    }

    private protected AgentRecord NewRecord(string? userId = null, string? repoHash = null, string? leaseOwner = "replica-a")
    {
        var now = Clock.GetUtcNow();
        return new AgentRecord(
            AgentId: "a" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(10)),
            UserId: userId ?? "user-" + Guid.NewGuid().ToString("N")[..8],
            RepoHash: repoHash ?? Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32)),
            SourcePath: "/home/dev/src/répo with spaces",
            Backend: "process",
            BackendRef: "",
            Address: "",
            State: AgentState.Allocating,
            CreatedAt: now,
            LastUsedAt: now,
            LeaseOwner: leaseOwner,
            LeaseExpiresAt: leaseOwner is null ? null : now.AddSeconds(30));
    }

    private protected static AgentRecord AsReady(AgentRecord record, string backendRef = "4242", string address = "http://127.0.0.1:41234") =>
        record with
        {
            State = AgentState.Ready,
            BackendRef = backendRef,
            Address = address,
            LeaseOwner = null,
            LeaseExpiresAt = null,
            LastUsedAt = record.LastUsedAt.AddMilliseconds(1500),
        };

    private static string NewLeaseName() => "lease-" + Guid.NewGuid().ToString("N")[..12];

    [Fact]
    public async Task InsertedRecord_ReadsBackIdentically_ByGetFindAndList()
    {
        var store = await NewStoreAsync();
        var record = NewRecord();

        Assert.True(await store.TryInsertAsync(record, CancellationToken.None).WaitAsync(Timeout));

        Assert.Equal(record, await store.GetAsync(record.AgentId, CancellationToken.None).WaitAsync(Timeout));
        Assert.Equal(record, await store.FindAsync(record.UserId, record.RepoHash, CancellationToken.None).WaitAsync(Timeout));
        var listed = await store.ListAsync(CancellationToken.None).WaitAsync(Timeout);
        Assert.Contains(record, listed);
    }

    [Fact]
    public async Task RecordWithoutLease_RoundTripsNulls()
    {
        var store = await NewStoreAsync();
        var record = AsReady(NewRecord(leaseOwner: null));

        Assert.True(await store.TryInsertAsync(record, CancellationToken.None).WaitAsync(Timeout));

        var read = await store.GetAsync(record.AgentId, CancellationToken.None).WaitAsync(Timeout);
        Assert.Equal(record, read);
        Assert.Null(read!.LeaseOwner);
        Assert.Null(read.LeaseExpiresAt);
    }

    [Fact]
    public async Task UnknownAgent_GetAndFindReturnNull()
    {
        var store = await NewStoreAsync();

        Assert.Null(await store.GetAsync("a00000000000000000000", CancellationToken.None).WaitAsync(Timeout));
        Assert.Null(await store.FindAsync("nobody", "0000", CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task ListAsync_ReturnsEveryRow()
    {
        var store = await NewStoreAsync();
        var user = "user-" + Guid.NewGuid().ToString("N")[..8];
        var records = new[] { NewRecord(user), AsReady(NewRecord(user)), NewRecord(user) with { State = AgentState.Terminating } };
        foreach (var record in records)
        {
            Assert.True(await store.TryInsertAsync(record, CancellationToken.None).WaitAsync(Timeout));
        }

        var listed = await store.ListAsync(CancellationToken.None).WaitAsync(Timeout);

        var mine = listed.Where(r => r.UserId == user).OrderBy(r => r.AgentId, StringComparer.Ordinal).ToList();
        Assert.Equal(records.OrderBy(r => r.AgentId, StringComparer.Ordinal), mine);
    }

    [Fact]
    public async Task TryInsert_SecondRowForSameUserAndRepo_ReturnsFalseAndWritesNothing()
    {
        var store = await NewStoreAsync();
        var first = NewRecord();
        var second = NewRecord(first.UserId, first.RepoHash, leaseOwner: "replica-b") with { SourcePath = "/elsewhere" };

        Assert.True(await store.TryInsertAsync(first, CancellationToken.None).WaitAsync(Timeout));
        Assert.False(await store.TryInsertAsync(second, CancellationToken.None).WaitAsync(Timeout));
        Assert.False(await store.TryInsertAsync(first, CancellationToken.None).WaitAsync(Timeout));

        Assert.Equal(first, await store.FindAsync(first.UserId, first.RepoHash, CancellationToken.None).WaitAsync(Timeout));
        Assert.Null(await store.GetAsync(second.AgentId, CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task TryInsert_SameRepoForDifferentUsers_AreSeparateAgents()
    {
        var store = await NewStoreAsync();
        var alice = NewRecord("alice-" + Guid.NewGuid().ToString("N")[..8]);
        var bob = NewRecord("bob-" + Guid.NewGuid().ToString("N")[..8], alice.RepoHash);

        Assert.True(await store.TryInsertAsync(alice, CancellationToken.None).WaitAsync(Timeout));
        Assert.True(await store.TryInsertAsync(bob, CancellationToken.None).WaitAsync(Timeout));

        Assert.Equal(alice.AgentId, (await store.FindAsync(alice.UserId, alice.RepoHash, CancellationToken.None).WaitAsync(Timeout))!.AgentId);
        Assert.Equal(bob.AgentId, (await store.FindAsync(bob.UserId, bob.RepoHash, CancellationToken.None).WaitAsync(Timeout))!.AgentId);
    }

    [Fact]
    public async Task TryInsert_FiftyConcurrentCallersAcrossTwoStoreInstances_ExactlyOneWins()
    {
        // Two instances on one database = two orchestrator replicas.
        var stores = new[] { await NewStoreAsync(), await NewStoreAsync() };
        var template = NewRecord();
        var candidates = Enumerable.Range(0, 50)
            .Select(i => NewRecord(template.UserId, template.RepoHash, leaseOwner: $"replica-{i % 2}"))
            .ToList();

        var results = await Task.WhenAll(candidates.Select((c, i) =>
            Task.Run(() => stores[i % 2].TryInsertAsync(c, CancellationToken.None)))).WaitAsync(Timeout);

        Assert.Equal(1, results.Count(won => won));
        var winner = candidates[Array.IndexOf(results, true)];
        Assert.Equal(winner, await stores[0].FindAsync(template.UserId, template.RepoHash, CancellationToken.None).WaitAsync(Timeout));
        foreach (var loser in candidates.Where(c => c != winner))
        {
            Assert.Null(await stores[1].GetAsync(loser.AgentId, CancellationToken.None).WaitAsync(Timeout));
        }
    }

    [Fact]
    public async Task TryUpdate_WhenStateAndLeaseOwnerMatch_ReplacesTheRow()
    {
        var store = await NewStoreAsync();
        var allocating = NewRecord();
        Assert.True(await store.TryInsertAsync(allocating, CancellationToken.None).WaitAsync(Timeout));
        var ready = AsReady(allocating);

        Assert.True(await store.TryUpdateAsync(allocating, ready, CancellationToken.None).WaitAsync(Timeout));

        Assert.Equal(ready, await store.GetAsync(allocating.AgentId, CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task TryUpdate_WithNullLeaseOwner_MatchesARowWithoutLease()
    {
        var store = await NewStoreAsync();
        var ready = AsReady(NewRecord(leaseOwner: null));
        Assert.True(await store.TryInsertAsync(ready, CancellationToken.None).WaitAsync(Timeout));
        var terminating = ready with
        {
            State = AgentState.Terminating,
            LeaseOwner = "reaper-1",
            LeaseExpiresAt = Clock.GetUtcNow().AddMinutes(1),
        };

        Assert.True(await store.TryUpdateAsync(ready, terminating, CancellationToken.None).WaitAsync(Timeout));

        Assert.Equal(terminating, await store.GetAsync(ready.AgentId, CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task TryUpdate_WhenStateChangedMeanwhile_ReturnsFalseAndKeepsTheRow()
    {
        var store = await NewStoreAsync();
        var allocating = NewRecord();
        Assert.True(await store.TryInsertAsync(allocating, CancellationToken.None).WaitAsync(Timeout));
        var ready = AsReady(allocating);
        Assert.True(await store.TryUpdateAsync(allocating, ready, CancellationToken.None).WaitAsync(Timeout));

        // A second writer still holding the stale Allocating view loses.
        var stale = allocating with { State = AgentState.Terminating, Address = "stale" };
        Assert.False(await store.TryUpdateAsync(allocating, stale, CancellationToken.None).WaitAsync(Timeout));

        Assert.Equal(ready, await store.GetAsync(allocating.AgentId, CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task TryUpdate_WhenLeaseOwnerDiffers_ReturnsFalse()
    {
        var store = await NewStoreAsync();
        var owned = NewRecord(leaseOwner: "replica-a");
        Assert.True(await store.TryInsertAsync(owned, CancellationToken.None).WaitAsync(Timeout));
        var takeover = owned with { LeaseOwner = "replica-b", Address = "b" };

        // Same state, other owner; and "no owner" must not match an owned row either.
        Assert.False(await store.TryUpdateAsync(owned with { LeaseOwner = "replica-b" }, takeover, CancellationToken.None).WaitAsync(Timeout));
        Assert.False(await store.TryUpdateAsync(owned with { LeaseOwner = null, LeaseExpiresAt = null }, takeover, CancellationToken.None).WaitAsync(Timeout));

        Assert.Equal(owned, await store.GetAsync(owned.AgentId, CancellationToken.None).WaitAsync(Timeout));

        // And an owned expectation must not match a row without owner.
        var free = AsReady(NewRecord(leaseOwner: null));
        Assert.True(await store.TryInsertAsync(free, CancellationToken.None).WaitAsync(Timeout));
        Assert.False(await store.TryUpdateAsync(free with { LeaseOwner = "replica-a" }, free with { Address = "x" }, CancellationToken.None).WaitAsync(Timeout));
        Assert.Equal(free, await store.GetAsync(free.AgentId, CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task TryUpdate_UnknownAgent_ReturnsFalse()
    {
        var store = await NewStoreAsync();
        var ghost = NewRecord();

        Assert.False(await store.TryUpdateAsync(ghost, AsReady(ghost), CancellationToken.None).WaitAsync(Timeout));
        Assert.Null(await store.GetAsync(ghost.AgentId, CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task TryUpdate_ConcurrentTakeoversFromOneView_ExactlyOneWins()
    {
        var stores = new[] { await NewStoreAsync(), await NewStoreAsync() };
        var ready = AsReady(NewRecord(leaseOwner: null));
        Assert.True(await stores[0].TryInsertAsync(ready, CancellationToken.None).WaitAsync(Timeout));
        var takeovers = Enumerable.Range(0, 20)
            .Select(i => ready with { State = AgentState.Terminating, LeaseOwner = $"reaper-{i}", LeaseExpiresAt = Clock.GetUtcNow().AddMinutes(1) })
            .ToList();

        var results = await Task.WhenAll(takeovers.Select((t, i) =>
            Task.Run(() => stores[i % 2].TryUpdateAsync(ready, t, CancellationToken.None)))).WaitAsync(Timeout);

        Assert.Equal(1, results.Count(won => won));
        var winner = takeovers[Array.IndexOf(results, true)];
        Assert.Equal(winner, await stores[1].GetAsync(ready.AgentId, CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task Touch_MovesLastUsedForwardButNeverBackwards()
    {
        var store = await NewStoreAsync();
        var record = AsReady(NewRecord(leaseOwner: null));
        Assert.True(await store.TryInsertAsync(record, CancellationToken.None).WaitAsync(Timeout));

        var later = record.LastUsedAt.AddMinutes(5);
        await store.TouchAsync(record.AgentId, later, CancellationToken.None).WaitAsync(Timeout);
        Assert.Equal(later, (await store.GetAsync(record.AgentId, CancellationToken.None).WaitAsync(Timeout))!.LastUsedAt);

        await store.TouchAsync(record.AgentId, later.AddMinutes(-3), CancellationToken.None).WaitAsync(Timeout);
        var afterStaleTouch = await store.GetAsync(record.AgentId, CancellationToken.None).WaitAsync(Timeout);
        Assert.Equal(record with { LastUsedAt = later }, afterStaleTouch);
    }

    [Fact]
    public async Task Touch_UnknownAgent_IsANoOp()
    {
        var store = await NewStoreAsync();

        await store.TouchAsync("a11111111111111111111", Clock.GetUtcNow(), CancellationToken.None).WaitAsync(Timeout);

        Assert.Null(await store.GetAsync("a11111111111111111111", CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task Delete_RemovesTheRowAndFreesTheUserRepoSlot()
    {
        var store = await NewStoreAsync();
        var first = NewRecord();
        Assert.True(await store.TryInsertAsync(first, CancellationToken.None).WaitAsync(Timeout));

        Assert.True(await store.DeleteAsync(first.AgentId, CancellationToken.None).WaitAsync(Timeout));
        Assert.False(await store.DeleteAsync(first.AgentId, CancellationToken.None).WaitAsync(Timeout));
        Assert.Null(await store.GetAsync(first.AgentId, CancellationToken.None).WaitAsync(Timeout));
        Assert.Null(await store.FindAsync(first.UserId, first.RepoHash, CancellationToken.None).WaitAsync(Timeout));

        var replacement = NewRecord(first.UserId, first.RepoHash);
        Assert.True(await store.TryInsertAsync(replacement, CancellationToken.None).WaitAsync(Timeout));
        Assert.Equal(replacement, await store.FindAsync(first.UserId, first.RepoHash, CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task Delete_OnlyRemovesTheNamedAgent()
    {
        var store = await NewStoreAsync();
        var keep = NewRecord();
        Assert.True(await store.TryInsertAsync(keep, CancellationToken.None).WaitAsync(Timeout));

        Assert.False(await store.DeleteAsync("a22222222222222222222", CancellationToken.None).WaitAsync(Timeout));

        Assert.Equal(keep, await store.GetAsync(keep.AgentId, CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task Lease_AcquireRenewContendAndExpire()
    {
        var replicaA = await NewStoreAsync();
        var replicaB = await NewStoreAsync();
        var lease = NewLeaseName();
        var duration = TimeSpan.FromSeconds(30);

        Assert.True(await replicaA.TryAcquireLeaseAsync(lease, "a", duration, CancellationToken.None).WaitAsync(Timeout));
        Assert.False(await replicaB.TryAcquireLeaseAsync(lease, "b", duration, CancellationToken.None).WaitAsync(Timeout));

        Clock.Advance(TimeSpan.FromSeconds(20));
        Assert.True(await replicaA.TryAcquireLeaseAsync(lease, "a", duration, CancellationToken.None).WaitAsync(Timeout)); // renew → t+50 s

        Clock.Advance(TimeSpan.FromSeconds(20)); // t+40 s: past the first term, inside the renewed one
        Assert.False(await replicaB.TryAcquireLeaseAsync(lease, "b", duration, CancellationToken.None).WaitAsync(Timeout));

        Clock.Advance(TimeSpan.FromSeconds(11)); // t+51 s: lapsed
        Assert.True(await replicaB.TryAcquireLeaseAsync(lease, "b", duration, CancellationToken.None).WaitAsync(Timeout));
        Assert.False(await replicaA.TryAcquireLeaseAsync(lease, "a", duration, CancellationToken.None).WaitAsync(Timeout));
        Assert.True(await replicaB.TryAcquireLeaseAsync(lease, "b", duration, CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task Lease_NamesAreIndependent()
    {
        var store = await NewStoreAsync();
        var reaper = NewLeaseName();
        var other = NewLeaseName();

        Assert.True(await store.TryAcquireLeaseAsync(reaper, "a", TimeSpan.FromMinutes(1), CancellationToken.None).WaitAsync(Timeout));
        Assert.True(await store.TryAcquireLeaseAsync(other, "b", TimeSpan.FromMinutes(1), CancellationToken.None).WaitAsync(Timeout));
        Assert.False(await store.TryAcquireLeaseAsync(reaper, "b", TimeSpan.FromMinutes(1), CancellationToken.None).WaitAsync(Timeout));
        Assert.False(await store.TryAcquireLeaseAsync(other, "a", TimeSpan.FromMinutes(1), CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task Lease_ListByPrefixShowsOnlyLiveOnesAndReleaseEndsOnlyTheOwnersLease()
    {
        var store = await NewStoreAsync();
        // A prefix of its own per test (the database may be shared), holding LIKE's wildcards to show they are literal.
        var prefix = NewLeaseName() + "_%/";
        Assert.True(await store.TryAcquireLeaseAsync(prefix + "b", "http://10.0.0.2:8081", TimeSpan.FromSeconds(6), CancellationToken.None).WaitAsync(Timeout));
        Assert.True(await store.TryAcquireLeaseAsync(prefix + "a", "http://10.0.0.1:8081", TimeSpan.FromSeconds(60), CancellationToken.None).WaitAsync(Timeout));
        Assert.True(await store.TryAcquireLeaseAsync(prefix[..^2] + "x/c", "http://10.0.0.3:8081", TimeSpan.FromSeconds(60), CancellationToken.None).WaitAsync(Timeout));

        var listed = await store.ListLeasesAsync(prefix, CancellationToken.None).WaitAsync(Timeout);
        Assert.Equal([(prefix + "a", "http://10.0.0.1:8081"), (prefix + "b", "http://10.0.0.2:8081")], listed.Select(l => (l.Name, l.Owner)));

        // An expired lease is not listed (a replica that died without a word leaves the set).
        Clock.Advance(TimeSpan.FromSeconds(7));
        Assert.Equal([prefix + "a"], (await store.ListLeasesAsync(prefix, CancellationToken.None).WaitAsync(Timeout)).Select(l => l.Name));

        // Only its owner ends a lease (a draining replica), and then it is gone at once.
        Assert.False(await store.ReleaseLeaseAsync(prefix + "a", "http://10.0.0.9:8081", CancellationToken.None).WaitAsync(Timeout));
        Assert.True(await store.ReleaseLeaseAsync(prefix + "a", "http://10.0.0.1:8081", CancellationToken.None).WaitAsync(Timeout));
        Assert.Empty(await store.ListLeasesAsync(prefix, CancellationToken.None).WaitAsync(Timeout));
        Assert.True(await store.TryAcquireLeaseAsync(prefix + "a", "http://10.0.0.7:8081", TimeSpan.FromSeconds(6), CancellationToken.None).WaitAsync(Timeout));
    }

    [Fact]
    public async Task Lease_ConcurrentContenders_ExactlyOneOwnerForAFreshAndForAnExpiredLease()
    {
        var stores = new[] { await NewStoreAsync(), await NewStoreAsync() };
        var lease = NewLeaseName();
        var duration = TimeSpan.FromSeconds(10);

        async Task<int> ContendAsync()
        {
            var results = await Task.WhenAll(Enumerable.Range(0, 20).Select(i =>
                Task.Run(() => stores[i % 2].TryAcquireLeaseAsync(lease, $"owner-{i}", duration, CancellationToken.None)))).WaitAsync(Timeout);
            Assert.Equal(1, results.Count(won => won));
            return Array.IndexOf(results, true);
        }

        var first = await ContendAsync();
        Assert.True(await stores[0].TryAcquireLeaseAsync(lease, $"owner-{first}", duration, CancellationToken.None).WaitAsync(Timeout));

        Clock.Advance(duration + TimeSpan.FromSeconds(1));
        var second = await ContendAsync();
        Assert.True(await stores[1].TryAcquireLeaseAsync(lease, $"owner-{second}", duration, CancellationToken.None).WaitAsync(Timeout));
        Output.WriteLine($"fresh lease went to owner-{first}, the expired one to owner-{second}");
    }

    [Fact]
    public async Task Initialize_AgainOnALiveDatabase_IsIdempotentAndKeepsData()
    {
        var store = await NewStoreAsync();
        var record = NewRecord();
        Assert.True(await store.TryInsertAsync(record, CancellationToken.None).WaitAsync(Timeout));

        await store.InitializeAsync(CancellationToken.None).WaitAsync(Timeout);
        var another = await NewStoreAsync();

        Assert.Equal(record, await another.GetAsync(record.AgentId, CancellationToken.None).WaitAsync(Timeout));
        Assert.False(await another.TryInsertAsync(NewRecord(record.UserId, record.RepoHash), CancellationToken.None).WaitAsync(Timeout));
    }
}
