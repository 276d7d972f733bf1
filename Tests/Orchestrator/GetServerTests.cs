using System.Globalization;
using Grpc.Core;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Tests.Orchestrator.Infrastructure;
using Rbs.V1;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Orchestrator;

/// <summary>GetServer on a real in-process orchestrator with real spawned (stand-in) agent processes.</summary>
public sealed class GetServerTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly OrchestratorTestContext _context = new(output);

    public Task InitializeAsync() => _context.InitializeAsync();

    public Task DisposeAsync() => _context.DisposeAsync();

    [Fact]
    public async Task FirstCallIsColdAndTheSecondReusesTheSameAgent()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var workspace = _context.CreateWorkspace("main");

        var cold = await orchestrator.GetServerAsync("repo-1", workspace);
        var warm = await orchestrator.GetServerAsync("repo-1", workspace);

        Assert.False(cold.Warm);
        Assert.True(warm.Warm);
        Assert.Matches("^a[0-9a-f]{20}$", cold.AgentId);
        Assert.Equal(cold.AgentId, warm.AgentId);
        Assert.Equal(cold.BackendRef, warm.BackendRef);
        Assert.Equal(cold.Address, warm.Address);
        Assert.Equal("process", cold.Backend);
        Assert.Equal(ConnectMode.Direct, cold.ConnectMode);
        Assert.Equal(workspace, cold.WorkspacePath);
        Assert.True(UnixProcesses.IsAgentProcess(Pid(cold), cold.AgentId), "the agent process should be running");
        Assert.True(File.Exists(Path.Combine(_context.AgentsDirectory, cold.AgentId + ".log")), "the agent's log file should exist");
        Assert.Single(TestAgents.LiveProcesses(_context.AgentsDirectory));
    }

    [Fact]
    public async Task AnInPlaceAgentBuildsTheClientsDirectoryAndNeedsNoSync()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var workspace = _context.CreateWorkspace("main");

        var response = await orchestrator.GetServerAsync("repo-1", workspace);

        Assert.False(response.SyncRequired);
        Assert.Equal(workspace, response.WorkspacePath);
    }

    [Fact]
    public async Task ASyncedAgentGetsItsOwnEmptyWorkspaceAndIsNotTheInPlaceAgent()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var workspace = _context.CreateWorkspace("main");
        File.WriteAllText(Path.Combine(workspace, "BUILD"), "# the client's file");

        var inPlace = await orchestrator.GetServerAsync("repo-1", workspace);
        var synced = await SyncedAsync(orchestrator, "repo-1", workspace);
        var syncedAgain = await SyncedAsync(orchestrator, "repo-1", workspace);

        Assert.True(synced.SyncRequired);
        Assert.NotEqual(inPlace.AgentId, synced.AgentId);
        Assert.Equal(synced.AgentId, syncedAgain.AgentId);
        Assert.True(syncedAgain.Warm);
        Assert.Equal(Path.Combine(Path.GetDirectoryName(_context.StatePath)!, "workspaces", "local", "repo-1", "tree"), synced.WorkspacePath);
        Assert.True(Directory.Exists(synced.WorkspacePath), "the synced workspace should be created for the agent");
        Assert.Empty(Directory.EnumerateFileSystemEntries(synced.WorkspacePath));
        Assert.True(File.Exists(Path.Combine(workspace, "BUILD")), "the client's own directory must be left alone");
    }

    [Fact]
    public async Task ASyncedAgentDoesNotNeedTheClientsPathToExistHere()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var laptopPath = "/Users/alice/src/monorepo-that-is-not-on-this-machine";

        var inPlace = await Assert.ThrowsAsync<RpcException>(() => orchestrator.GetServerAsync("repo-1", laptopPath));
        var synced = await SyncedAsync(orchestrator, "repo-1", laptopPath);

        Assert.Equal(StatusCode.InvalidArgument, inPlace.StatusCode);
        Assert.True(synced.SyncRequired);
        Assert.StartsWith(Path.Combine(Path.GetDirectoryName(_context.StatePath)!, "workspaces") + "/", synced.WorkspacePath, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("alice", "alice")]
    [InlineData("alice@example.com", "aliceexamplecom-")]
    [InlineData("../../etc", "etc-")]
    [InlineData(".hidden", "hidden-")]
    public void UserIdsBecomeOneSafeDirectoryName(string userId, string expectedPrefix)
    {
        var name = Rbs.Orchestrator.Allocation.WorkspacePlacement.DirectoryName(userId);

        Assert.StartsWith(expectedPrefix, name, StringComparison.Ordinal);
        Assert.DoesNotContain('/', name);
        Assert.NotEqual(name, Rbs.Orchestrator.Allocation.WorkspacePlacement.DirectoryName(userId + "x"));
    }

    private static Task<GetServerResponse> SyncedAsync(TestOrchestrator orchestrator, string repoHash, string sourcePath) =>
        orchestrator.Client.GetServerAsync(new GetServerRequest { RepoHash = repoHash, SourcePath = sourcePath, SyncWorkspace = true })
            .ResponseAsync.WaitAsync(TimeSpan.FromSeconds(30));

    [Fact]
    public async Task AKilledAgentIsReplacedByTheNextCall()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var workspace = _context.CreateWorkspace("main");
        var first = await orchestrator.GetServerAsync("repo-1", workspace);

        UnixProcesses.Signal(Pid(first), UnixProcesses.SigKill);
        await TestWait.EventuallyAsync(() => !UnixProcesses.IsAgentProcess(Pid(first), first.AgentId));
        var second = await orchestrator.GetServerAsync("repo-1", workspace);

        Assert.False(second.Warm);
        Assert.NotEqual(first.AgentId, second.AgentId);
        Assert.True(UnixProcesses.IsAgentProcess(Pid(second), second.AgentId));
        var row = Assert.Single(await orchestrator.Store.ListAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(second.AgentId, row.AgentId);
    }

    [Fact]
    public async Task FiftyConcurrentCallsForOneRepoAllocateExactlyOneAgent()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var workspace = _context.CreateWorkspace("main");

        var responses = await Task.WhenAll(
            Enumerable.Range(0, 50).Select(_ => Task.Run(() => orchestrator.GetServerAsync("repo-1", workspace))))
            .WaitAsync(TimeSpan.FromSeconds(60));

        Assert.Single(responses.Select(r => r.AgentId).Distinct());
        Assert.Equal(1, responses.Count(r => !r.Warm));
        Assert.Single(await orchestrator.Store.ListAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Single(TestAgents.LiveProcesses(_context.AgentsDirectory));
        Assert.Single(Directory.GetFiles(_context.AgentsDirectory, "*.log"));
    }

    [Fact]
    public async Task TwoRepositoriesGetTwoAgents()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Fake);

        var responses = await Task.WhenAll(
            orchestrator.GetServerAsync("repo-1", _context.CreateWorkspace("one")),
            orchestrator.GetServerAsync("repo-2", _context.CreateWorkspace("two")));

        Assert.NotEqual(responses[0].AgentId, responses[1].AgentId);
        Assert.NotEqual(responses[0].BackendRef, responses[1].BackendRef);
        Assert.All(responses, r => Assert.False(r.Warm));
        Assert.Equal(2, TestAgents.LiveProcesses(_context.AgentsDirectory).Count);
    }

    [Theory]
    [InlineData("", "/tmp", "repo_hash is empty")]
    [InlineData("bad/hash", "/tmp", "repo_hash has the character '/'")]
    [InlineData("bad hash", "/tmp", "repo_hash has the character ' '")]
    [InlineData("ok", "", "source_path is empty")]
    [InlineData("ok", "relative/path", "source_path 'relative/path' is relative")]
    [InlineData("ok", "/nonexistent/rbs/workspace", "does not exist")]
    public async Task MalformedRequestsAreRejectedWithAClearMessage(string repoHash, string sourcePath, string expected)
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Fake);

        var error = await Assert.ThrowsAsync<RpcException>(() => orchestrator.GetServerAsync(repoHash, sourcePath));

        output.WriteLine(error.Status.Detail);
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains(expected, error.Status.Detail, StringComparison.Ordinal);
        Assert.Empty(await orchestrator.Store.ListAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Empty(TestAgents.LiveProcesses(_context.AgentsDirectory));
    }

    [Fact]
    public async Task OverlongRepoHashAndTunnelModeAreRejected()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var workspace = _context.CreateWorkspace("main");

        var tooLong = await Assert.ThrowsAsync<RpcException>(() => orchestrator.GetServerAsync(new string('a', 129), workspace));
        var tunnel = await Assert.ThrowsAsync<RpcException>(() => orchestrator.Client.GetServerAsync(
            new GetServerRequest { RepoHash = "repo-1", SourcePath = workspace, ConnectMode = ConnectMode.Tunnel }).ResponseAsync.WaitAsync(TimeSpan.FromSeconds(10)));

        Assert.Equal(StatusCode.InvalidArgument, tooLong.StatusCode);
        Assert.Contains("129 characters", tooLong.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.FailedPrecondition, tunnel.StatusCode);
        Assert.Contains("tunnel mode needs a gateway", tunnel.Status.Detail, StringComparison.Ordinal);
        // 128 characters is fine.
        Assert.False((await orchestrator.GetServerAsync(new string('a', 128), workspace)).Warm);
    }

    [Fact]
    public async Task AMissingAgentExecutableFailsClearlyAndLeavesNoRow()
    {
        var orchestrator = await _context.StartOrchestratorAsync(Path.Combine(_context.Root, "no-such-agent"));

        var error = await Assert.ThrowsAsync<RpcException>(() => orchestrator.GetServerAsync("repo-1", _context.CreateWorkspace("main")));

        output.WriteLine(error.Status.Detail);
        Assert.Equal(StatusCode.FailedPrecondition, error.StatusCode);
        Assert.Contains("not found", error.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("--agent-path", error.Status.Detail, StringComparison.Ordinal);
        Assert.Empty(await orchestrator.Store.ListAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public async Task AnAgentThatExitsAtStartupFailsWithItsOutputAndLeavesNothingBehind()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Crashing);

        var error = await Assert.ThrowsAsync<RpcException>(() => orchestrator.GetServerAsync("repo-1", _context.CreateWorkspace("main")));

        output.WriteLine(error.Status.Detail);
        Assert.Equal(StatusCode.FailedPrecondition, error.StatusCode);
        Assert.Contains("exited with code 3", error.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("simulated start-up failure", error.Status.Detail, StringComparison.Ordinal);
        Assert.Empty(await orchestrator.Store.ListAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public async Task CallersQueuedBehindAFailedStartShareItsErrorInsteadOfRespawning()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Crashing);
        var workspace = _context.CreateWorkspace("main");

        var calls = Enumerable.Range(0, 10).Select(_ => Task.Run(() => orchestrator.GetServerAsync("repo-1", workspace))).ToList();
        var errors = new List<RpcException>();
        foreach (var call in calls)
        {
            errors.Add(await Assert.ThrowsAsync<RpcException>(() => call));
        }

        Assert.All(errors, e => Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode));
        Assert.All(errors, e => Assert.Contains("simulated start-up failure", e.Status.Detail, StringComparison.Ordinal));
        // One spawn attempt per failure wave, not one per caller (each attempt leaves its log file).
        var spawns = Directory.GetFiles(_context.AgentsDirectory, "*.log").Length;
        output.WriteLine($"{spawns} spawn attempt(s) for 10 concurrent callers");
        Assert.True(spawns <= 2, $"{spawns} spawn attempts for 10 concurrent callers");

        // A later call tries again rather than replaying an old failure.
        await Assert.ThrowsAsync<RpcException>(() => orchestrator.GetServerAsync("repo-1", workspace));
        Assert.Equal(spawns + 1, Directory.GetFiles(_context.AgentsDirectory, "*.log").Length);
    }

    [Fact]
    public async Task AnAgentThatNeverBecomesReadyTimesOutAndIsKilled()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Hanging, extraArgs: ["--agent-start-timeout", "00:00:01"]);

        var error = await Assert.ThrowsAsync<RpcException>(() => orchestrator.GetServerAsync("repo-1", _context.CreateWorkspace("main")));

        output.WriteLine(error.Status.Detail);
        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        Assert.Contains("did not become ready within 1 s", error.Status.Detail, StringComparison.Ordinal);
        Assert.Empty(await orchestrator.Store.ListAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));
        await TestWait.EventuallyAsync(() => TestAgents.LiveProcesses(_context.AgentsDirectory).Count == 0);
    }

    internal static int Pid(GetServerResponse response) => int.Parse(response.BackendRef, CultureInfo.InvariantCulture);
}
