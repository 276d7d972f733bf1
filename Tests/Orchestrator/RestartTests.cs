using Microsoft.Data.Sqlite;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Tests.Orchestrator.Infrastructure;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Orchestrator;

/// <summary>An orchestrator restarted on the same state file re-adopts live agents and forgets dead ones.</summary>
public sealed class RestartTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly OrchestratorTestContext _context = new(output);

    public Task InitializeAsync() => _context.InitializeAsync();

    public Task DisposeAsync() => _context.DisposeAsync();

    [Fact]
    public async Task ARestartedOrchestratorReusesTheLiveAgent()
    {
        var workspace = _context.CreateWorkspace("main");
        var first = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var before = await first.GetServerAsync("repo-1", workspace);
        await first.StopAsync();

        // The agent outlives its orchestrator (own session, not a child that dies with it).
        Assert.True(UnixProcesses.IsAgentProcess(GetServerTests.Pid(before), before.AgentId));

        var second = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var after = await second.GetServerAsync("repo-1", workspace);

        Assert.True(after.Warm);
        Assert.Equal(before.AgentId, after.AgentId);
        Assert.Equal(before.BackendRef, after.BackendRef);
        Assert.Single(TestAgents.LiveProcesses(_context.AgentsDirectory));
    }

    [Fact]
    public async Task ARestartedOrchestratorForgetsAnAgentThatDiedMeanwhile()
    {
        var workspace = _context.CreateWorkspace("main");
        var first = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var before = await first.GetServerAsync("repo-1", workspace);
        await first.StopAsync();
        UnixProcesses.Signal(GetServerTests.Pid(before), UnixProcesses.SigKill);
        await TestWait.EventuallyAsync(() => !UnixProcesses.IsAgentProcess(GetServerTests.Pid(before), before.AgentId));

        var second = await _context.StartOrchestratorAsync(TestAgents.Fake);

        // Forgotten at start-up, before any call.
        Assert.Empty(await second.Store.ListAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));
        var after = await second.GetServerAsync("repo-1", workspace);
        Assert.False(after.Warm);
        Assert.NotEqual(before.AgentId, after.AgentId);
        Assert.Single(TestAgents.LiveProcesses(_context.AgentsDirectory));
    }

    [Fact]
    public async Task ALiveAgentMissingFromALostStateFileIsAdoptedNotDuplicated()
    {
        var workspace = _context.CreateWorkspace("main");
        var first = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var before = await first.GetServerAsync("repo-1", workspace);
        await first.StopAsync();
        SqliteConnection.ClearAllPools();
        foreach (var file in Directory.GetFiles(Path.GetDirectoryName(_context.StatePath)!, "orchestrator.db*"))
        {
            File.Delete(file);
        }

        var second = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var after = await second.GetServerAsync("repo-1", workspace);

        Assert.True(after.Warm);
        Assert.Equal(before.AgentId, after.AgentId);
        Assert.Single(TestAgents.LiveProcesses(_context.AgentsDirectory));
    }

    [Fact]
    public async Task AStrayAgentForARepositoryThatAlreadyHasOneIsStopped()
    {
        var workspace = _context.CreateWorkspace("main");
        var first = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var original = await first.GetServerAsync("repo-1", workspace);
        // Simulate a duplicate: delete the row (the agent keeps running), allocate again, then restart.
        Assert.True(await first.Store.DeleteAsync(original.AgentId, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));
        var replacement = await first.GetServerAsync("repo-1", workspace);
        Assert.NotEqual(original.AgentId, replacement.AgentId);
        await first.StopAsync();

        var second = await _context.StartOrchestratorAsync(TestAgents.Fake);

        Assert.False(UnixProcesses.IsAgentProcess(GetServerTests.Pid(original), original.AgentId), "the stray duplicate should be stopped");
        var after = await second.GetServerAsync("repo-1", workspace);
        Assert.True(after.Warm);
        Assert.Equal(replacement.AgentId, after.AgentId);
        Assert.Single(TestAgents.LiveProcesses(_context.AgentsDirectory));
    }
}
