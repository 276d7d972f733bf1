using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Time.Testing;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Orchestrator.Lifecycle;
using Rbs.Tests.Orchestrator.Infrastructure;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Orchestrator;

/// <summary>
/// Idle reaping. The stand-in agent serves no gRPC, so its GetStatus answers come from
/// <see cref="ScriptedStatusClient"/> (the reaper's injectable seam); processes and the store are real.
/// </summary>
public sealed class IdleReaperTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly OrchestratorTestContext _context = new(output);
    private readonly ScriptedStatusClient _status = new();

    public Task InitializeAsync() => _context.InitializeAsync();

    public Task DisposeAsync() => _context.DisposeAsync();

    [Fact]
    public async Task ReapsOnlyAgentsIdleBeyondTheTtlAndNeverOneRunningACommand()
    {
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        // The reap timer never fires on its own here (interval 1 day of fake time): the test drives passes.
        var orchestrator = await _context.StartOrchestratorAsync(
            TestAgents.Fake,
            builder =>
            {
                builder.Services.AddSingleton<TimeProvider>(time);
                builder.Services.AddSingleton<IAgentStatusClient>(_status);
            },
            "--idle-ttl", "01:00:00", "--reap-interval", "1.00:00:00");
        var reaper = orchestrator.App.Services.GetServices<IHostedService>().OfType<IdleReaper>().Single();
        var idle = await orchestrator.GetServerAsync("idle", _context.CreateWorkspace("idle"));
        var busy = await orchestrator.GetServerAsync("busy", _context.CreateWorkspace("busy"));
        var recentlyActive = await orchestrator.GetServerAsync("active", _context.CreateWorkspace("active"));
        var start = time.GetUtcNow();
        _status.Set(idle.AgentId, runningCommands: 0, lastActivity: start);
        _status.Set(busy.AgentId, runningCommands: 1, lastActivity: start);

        time.Advance(TimeSpan.FromMinutes(59));
        Assert.Equal(0, await reaper.ReapOnceAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(3, TestAgents.LiveProcesses(_context.AgentsDirectory).Count);

        time.Advance(TimeSpan.FromMinutes(2));
        // The third agent saw activity the store did not (a client kept using it): not idle by its own clock.
        _status.Set(recentlyActive.AgentId, runningCommands: 0, lastActivity: time.GetUtcNow().AddMinutes(-5));
        Assert.Equal(1, await reaper.ReapOnceAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30)));

        Assert.False(UnixProcesses.IsAgentProcess(GetServerTests.Pid(idle), idle.AgentId), "the idle agent should be stopped");
        Assert.True(UnixProcesses.IsAgentProcess(GetServerTests.Pid(busy), busy.AgentId), "an agent running a command must never be reaped");
        Assert.True(UnixProcesses.IsAgentProcess(GetServerTests.Pid(recentlyActive), recentlyActive.AgentId));
        var rows = await orchestrator.Store.ListAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(new[] { busy.AgentId, recentlyActive.AgentId }.Order(), rows.Select(r => r.AgentId).Order());

        // The busy agent's command ends; once idle past the TTL by both clocks it goes too.
        time.Advance(TimeSpan.FromMinutes(61));
        _status.Set(busy.AgentId, runningCommands: 0, lastActivity: time.GetUtcNow().AddMinutes(-61));
        Assert.Equal(2, await reaper.ReapOnceAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Empty(TestAgents.LiveProcesses(_context.AgentsDirectory));
        Assert.Empty(await orchestrator.Store.ListAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));

        // A reaped repository gets a fresh agent on its next call.
        var again = await orchestrator.GetServerAsync("idle", _context.CreateWorkspace("idle"));
        Assert.False(again.Warm);
    }

    [Fact]
    public async Task TheBackgroundReaperStopsAnIdleAgentOnItsOwn()
    {
        // Until the test scripts them, agents count as busy, so the 1 s TTL cannot race the set-up.
        var status = new ScriptedStatusClient { DefaultRunningCommands = 1 };
        var orchestrator = await _context.StartOrchestratorAsync(
            TestAgents.Fake,
            builder => builder.Services.AddSingleton<IAgentStatusClient>(status),
            "--idle-ttl", "00:00:01", "--reap-interval", "00:00:00.200");
        var idle = await orchestrator.GetServerAsync("idle", _context.CreateWorkspace("idle"));
        var busy = await orchestrator.GetServerAsync("busy", _context.CreateWorkspace("busy"));
        status.Set(idle.AgentId, runningCommands: 0, lastActivity: DateTimeOffset.UtcNow.AddHours(-1));
        status.Set(busy.AgentId, runningCommands: 1, lastActivity: DateTimeOffset.UtcNow.AddHours(-1));

        await TestWait.EventuallyAsync(
            () => !UnixProcesses.IsAgentProcess(GetServerTests.Pid(idle), idle.AgentId)
                && orchestrator.Store.ListAsync(CancellationToken.None).GetAwaiter().GetResult().Count == 1, timeout: TimeSpan.FromSeconds(15));

        Assert.True(UnixProcesses.IsAgentProcess(GetServerTests.Pid(busy), busy.AgentId), "an agent running a command must never be reaped");
        var row = Assert.Single(await orchestrator.Store.ListAsync(CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(busy.AgentId, row.AgentId);
    }

    [Fact]
    public async Task TheReaperForgetsADeadAgent()
    {
        var orchestrator = await _context.StartOrchestratorAsync(
            TestAgents.Fake,
            builder => builder.Services.AddSingleton<IAgentStatusClient>(_status),
            "--reap-interval", "00:00:00.200");
        var agent = await orchestrator.GetServerAsync("repo-1", _context.CreateWorkspace("main"));

        UnixProcesses.Signal(GetServerTests.Pid(agent), UnixProcesses.SigKill);

        await TestWait.EventuallyAsync(
            () => orchestrator.Store.ListAsync(CancellationToken.None).GetAwaiter().GetResult().Count == 0, timeout: TimeSpan.FromSeconds(15));
    }
}
