using System.Diagnostics;
using Grpc.Core;
using Rbs.Orchestrator.Allocation;
using Rbs.Orchestrator.Compute;
using Rbs.Orchestrator.Hosting;
using Rbs.Orchestrator.State;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.Orchestrator.Infrastructure;

namespace Rbs.Tests.Orchestrator;

/// <summary>
/// The allocation protocol between replicas, with the "other replica" played by direct store writes:
/// waiting for someone else's allocation, and cleaning up after an allocator that died.
/// </summary>
public sealed class AllocationProtocolTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly OrchestratorTestContext _context = new(output);

    public Task InitializeAsync() => _context.InitializeAsync();

    public Task DisposeAsync() => _context.DisposeAsync();

    [Fact]
    public async Task ACallerWaitsForAnotherReplicasAllocationAndGetsItsAgent()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var workspace = _context.CreateWorkspace("main");
        var now = DateTimeOffset.UtcNow;
        var allocating = new AgentRecord(
            AgentIds.New(), OrchestratorOptions.LocalUser, "repo-1", workspace, "process", string.Empty, string.Empty,
            AgentState.Allocating, now, now, "other-replica", now.AddSeconds(30));
        Assert.True(await orchestrator.Store.TryInsertAsync(allocating, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));

        var call = orchestrator.GetServerAsync("repo-1", workspace);
        // The caller has seen the other replica's Allocating row under a live lease and polls it (event 208).
        await TestWait.EventuallyAsync(() => _context.Logs.Count(208) > 0);
        Assert.False(call.IsCompleted, "the caller should wait while the other replica allocates");

        // The other replica finishes: it starts the agent and flips the row to Ready.
        var started = await orchestrator.Compute.StartAsync(
            new AgentSpec(allocating.AgentId, allocating.UserId, allocating.RepoHash, workspace), CancellationToken.None)
            .WaitAsync(TimeSpan.FromSeconds(30));
        var ready = allocating with
        {
            BackendRef = started.BackendRef,
            Address = started.Address,
            State = AgentState.Ready,
            LeaseOwner = null,
            LeaseExpiresAt = null,
        };
        Assert.True(await orchestrator.Store.TryUpdateAsync(allocating, ready, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));

        var response = await call;
        Assert.Equal(allocating.AgentId, response.AgentId);
        Assert.Equal(started.BackendRef, response.BackendRef);
        Assert.Single(TestAgents.LiveProcesses(_context.AgentsDirectory));
    }

    [Fact]
    public async Task AnAllocationWhoseLeaseLapsedIsCleanedUpAndReplaced()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var workspace = _context.CreateWorkspace("main");
        // A replica died mid-allocation: its agent process runs, its row says Allocating, its lease lapsed.
        var orphanId = AgentIds.New();
        var orphan = await orchestrator.Compute.StartAsync(new AgentSpec(orphanId, OrchestratorOptions.LocalUser, "repo-1", workspace), CancellationToken.None)
            .WaitAsync(TimeSpan.FromSeconds(30));
        var past = DateTimeOffset.UtcNow.AddMinutes(-5);
        Assert.True(await orchestrator.Store.TryInsertAsync(
            new AgentRecord(orphanId, OrchestratorOptions.LocalUser, "repo-1", workspace, "process", string.Empty, string.Empty,
                AgentState.Allocating, past, past, "dead-replica", past.AddSeconds(40)),
            CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));

        var response = await orchestrator.GetServerAsync("repo-1", workspace);

        Assert.False(response.Warm);
        Assert.NotEqual(orphanId, response.AgentId);
        Assert.False(Rbs.Orchestrator.Compute.Processes.UnixProcesses.IsAgentProcess(int.Parse(orphan.BackendRef, System.Globalization.CultureInfo.InvariantCulture), orphanId), "the orphaned agent should be stopped");
        Assert.Single(TestAgents.LiveProcesses(_context.AgentsDirectory));
    }

    [Fact]
    public async Task WarmCallsAreCheap()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var workspace = _context.CreateWorkspace("main");
        await orchestrator.GetServerAsync("repo-1", workspace);
        var allocator = orchestrator.Service<AgentAllocator>();

        var samples = new List<double>();
        for (var i = 0; i < 200; i++)
        {
            var stopwatch = Stopwatch.StartNew();
            var result = await allocator.GetOrAllocateAsync(OrchestratorOptions.LocalUser, "repo-1", workspace, CancellationToken.None)
                .WaitAsync(TimeSpan.FromSeconds(10));
            samples.Add(stopwatch.Elapsed.TotalMilliseconds);
            Assert.True(result.Warm);
        }

        samples.Sort();
        var p50 = samples[samples.Count / 2];
        var p99 = samples[(int)(samples.Count * 0.99)];
        output.WriteLine($"warm allocation p50 {p50:0.000} ms, p99 {p99:0.000} ms");
        // Generous bound for a loaded 2-core CI box; the target (< 5 ms p50 end to end) is measured by bench/.
        Assert.True(p50 < 25, $"warm p50 {p50:0.000} ms");
    }

    [Fact]
    public async Task AStateStoreFailureIsReportedAsUnavailable()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var workspace = _context.CreateWorkspace("main");
        // Make the database unusable underneath the running orchestrator.
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        foreach (var file in Directory.GetFiles(Path.GetDirectoryName(_context.StatePath)!, "orchestrator.db*"))
        {
            File.Delete(file);
        }

        Directory.CreateDirectory(_context.StatePath);

        var error = await Assert.ThrowsAsync<RpcException>(() => orchestrator.GetServerAsync("repo-1", workspace));

        output.WriteLine(error.Status.Detail);
        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        Assert.Contains("state store is unavailable", error.Status.Detail, StringComparison.Ordinal);
    }
}
