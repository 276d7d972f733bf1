using Rbs.Orchestrator.Compute;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Tests.Orchestrator.Infrastructure;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Orchestrator;

/// <summary>ProcessComputeService's stop and discovery behaviour on real processes.</summary>
public sealed class ProcessComputeServiceTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly OrchestratorTestContext _context = new(output);

    public Task InitializeAsync() => _context.InitializeAsync();

    public Task DisposeAsync() => _context.DisposeAsync();

    [Fact]
    public async Task StopEscalatesToSigkillForAnAgentThatIgnoresSigtermAndIsIdempotent()
    {
        var orchestrator = await _context.StartOrchestratorAsync(
            TestAgents.Stubborn, extraArgs: ["--Orchestrator:Process:StopTimeout", "00:00:00.500"]);
        var response = await orchestrator.GetServerAsync("repo-1", _context.CreateWorkspace("main"));
        var row = await orchestrator.Store.GetAsync(response.AgentId, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));
        // The agent ignores SIGTERM, and the kernel discards an ignored signal as it is sent: once kill(2) returns
        // there is nothing left to wait for.
        Assert.True(IgnoresSignal(GetServerTests.Pid(response), UnixProcesses.SigTerm), "the stubborn agent should ignore SIGTERM");
        UnixProcesses.Signal(GetServerTests.Pid(response), UnixProcesses.SigTerm);
        Assert.True(UnixProcesses.IsAgentProcess(GetServerTests.Pid(response), response.AgentId), "the stubborn agent should survive SIGTERM");

        await orchestrator.Compute.StopAsync(row!, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));
        await TestWait.EventuallyAsync(() => !UnixProcesses.IsAgentProcess(GetServerTests.Pid(response), response.AgentId));

        // Stopping an agent that is already gone is success.
        await orchestrator.Compute.StopAsync(row!, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.False(File.Exists(orchestrator.Compute.ReadyFilePath(response.AgentId)), "the ready file should be removed with the agent");
    }

    [Fact]
    public async Task DiscoverFindsLiveAgentsWithTheirOwnersAndDropsDeadOnes()
    {
        var orchestrator = await _context.StartOrchestratorAsync(TestAgents.Fake);
        var workspace = _context.CreateWorkspace("main");
        var alive = await orchestrator.GetServerAsync("repo-alive", workspace);
        var dead = await orchestrator.GetServerAsync("repo-dead", _context.CreateWorkspace("other"));
        UnixProcesses.Signal(GetServerTests.Pid(dead), UnixProcesses.SigKill);
        await TestWait.EventuallyAsync(() => !UnixProcesses.IsAgentProcess(GetServerTests.Pid(dead), dead.AgentId));

        var discovered = await orchestrator.Compute.DiscoverAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));

        var agent = Assert.Single(discovered);
        Assert.Equal(new DiscoveredAgent(alive.AgentId, "local", "repo-alive", workspace, alive.BackendRef, alive.Address), agent);
        Assert.False(File.Exists(orchestrator.Compute.ReadyFilePath(dead.AgentId)), "a dead agent's ready file should be cleaned up");
    }

    /// <summary>Whether <paramref name="pid"/> ignores <paramref name="signal"/> (the SigIgn mask of /proc/PID/status).</summary>
    private static bool IgnoresSignal(int pid, int signal)
    {
        var line = File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("SigIgn:", StringComparison.Ordinal));
        var mask = ulong.Parse(line["SigIgn:".Length..].Trim(), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture);
        return (mask & (1UL << (signal - 1))) != 0;
    }
}
