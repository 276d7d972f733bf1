using Grpc.Core;
using Rbs.Tests.Infrastructure;
using Rbs.V1;
using static Rbs.Tests.Agent.ExecuteCommandTests;

namespace Rbs.Tests.Agent;

public sealed class InterruptTests(ITestOutputHelper output)
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task InterruptSendsSigintAndTheToolsExitCodeComesBack()
    {
        await using var agent = await TestAgent.StartAsync(output);
        using var cts = new CancellationTokenSource(s_timeout);
        using var call = await agent.StartCommandAsync(Start("trap-int"), cts.Token);
        var result = new CommandResult();
        await CommandResult.ReadUntilStdoutContainsAsync(call, result, "ready", cts.Token);
        var grandchild = result.GrandchildPid();

        await call.RequestStream.WriteAsync(new ClientFrame { Interrupt = new Interrupt() }, cts.Token);
        await foreach (var frame in call.ResponseStream.ReadAllAsync(cts.Token))
        {
            result.Add(frame);
        }

        output.WriteLine($"exit {result.Exit}");
        Assert.Equal(8, result.Exit?.Code);
        Assert.Equal(0, result.Exit?.Signal);
        Assert.True(Processes.IsGone(result.Started!.Pid));
        await Processes.WaitGoneAsync(grandchild, TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task ToolIgnoringSigintAndSigtermIsKilledWithItsGrandchildAfterTheGracePeriods()
    {
        await using var agent = await TestAgent.StartAsync(
            output, "--interrupt-grace-period", "00:00:00.300", "--Agent:TerminateGracePeriod", "00:00:00.300");
        using var cts = new CancellationTokenSource(s_timeout);
        using var call = await agent.StartCommandAsync(Start("ignore-signals"), cts.Token);
        var result = new CommandResult();
        await CommandResult.ReadUntilStdoutContainsAsync(call, result, "ready", cts.Token);
        var grandchild = result.GrandchildPid();
        output.WriteLine($"tool pid {result.Started!.Pid}, grandchild {grandchild}");

        await call.RequestStream.WriteAsync(new ClientFrame { Interrupt = new Interrupt() }, cts.Token);
        await foreach (var frame in call.ResponseStream.ReadAllAsync(cts.Token))
        {
            result.Add(frame);
        }

        output.WriteLine($"exit {result.Exit}");
        Assert.Equal(137, result.Exit?.Code);
        Assert.Equal(9, result.Exit?.Signal);
        Assert.True(Processes.IsGone(result.Started.Pid));
        await Processes.WaitGoneAsync(grandchild, TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task ForcedInterruptKillsAtOnceWithoutWaitingForTheGracePeriod()
    {
        // A 10-minute grace period: only `force` can end this within the test's timeout.
        await using var agent = await TestAgent.StartAsync(output, "--interrupt-grace-period", "00:10:00");
        using var cts = new CancellationTokenSource(s_timeout);
        using var call = await agent.StartCommandAsync(Start("ignore-signals"), cts.Token);
        var result = new CommandResult();
        await CommandResult.ReadUntilStdoutContainsAsync(call, result, "ready", cts.Token);
        var grandchild = result.GrandchildPid();

        await call.RequestStream.WriteAsync(new ClientFrame { Interrupt = new Interrupt() }, cts.Token);
        // The agent has sent SIGINT (event 200). The tool ignores it, and the kernel discards an ignored signal as it
        // is sent: there is nothing more to wait for.
        await TestWait.EventuallyAsync(() => agent.Logs.Count(200) > 0, "the agent sent SIGINT");
        Assert.False(Processes.IsGone(result.Started!.Pid), "the tool ignores SIGINT and should still run during the grace period");
        await call.RequestStream.WriteAsync(new ClientFrame { Interrupt = new Interrupt { Force = true } }, cts.Token);
        await foreach (var frame in call.ResponseStream.ReadAllAsync(cts.Token))
        {
            result.Add(frame);
        }

        Assert.Equal(137, result.Exit?.Code);
        Assert.Equal(9, result.Exit?.Signal);
        await Processes.WaitGoneAsync(grandchild, TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task ClientCancellingTheCallInterruptsTheToolAndLeavesNoOrphans()
    {
        await using var agent = await TestAgent.StartAsync(output);
        using var callCts = new CancellationTokenSource();
        using var cts = new CancellationTokenSource(s_timeout);
        using var call = await agent.StartCommandAsync(Start("grandchild"), callCts.Token);
        var result = new CommandResult();
        await CommandResult.ReadUntilStdoutContainsAsync(call, result, "ready", cts.Token);
        var tool = result.Started!.Pid;
        var grandchild = result.GrandchildPid();
        output.WriteLine($"tool pid {tool}, grandchild {grandchild}; cancelling the call");

        await callCts.CancelAsync();

        // SIGINT ends the tool (no trap); its background grandchild ignores SIGINT (bash does that to background
        // jobs), so only the agent's clean-up of the process group removes it.
        await Processes.WaitGoneAsync(tool, TimeSpan.FromSeconds(10));
        await Processes.WaitGoneAsync(grandchild, TimeSpan.FromSeconds(10));
        await WaitForNoRunningCommandsAsync(agent, cts.Token);
    }

    [Fact]
    public async Task StatusCountsARunningCommandAndRecordsActivity()
    {
        await using var agent = await TestAgent.StartAsync(output);
        using var cts = new CancellationTokenSource(s_timeout);
        var before = await agent.Client.GetStatusAsync(new GetStatusRequest(), cancellationToken: cts.Token);
        Assert.Equal(0, before.RunningCommands);
        Assert.Equal(TestAgent.AgentId, before.AgentId);
        Assert.Equal(Environment.ProcessId, before.Pid);
        Assert.Equal(agent.Workspace, before.WorkspacePath);
        Assert.True(before.StartedUnixMillis > 0);

        using var call = await agent.StartCommandAsync(Start("trap-int"), cts.Token);
        var result = new CommandResult();
        await CommandResult.ReadUntilStdoutContainsAsync(call, result, "ready", cts.Token);
        var during = await agent.Client.GetStatusAsync(new GetStatusRequest(), cancellationToken: cts.Token);
        Assert.Equal(1, during.RunningCommands);
        Assert.True(during.LastActivityUnixMillis >= before.StartedUnixMillis);

        await call.RequestStream.WriteAsync(new ClientFrame { Interrupt = new Interrupt() }, cts.Token);
        await foreach (var frame in call.ResponseStream.ReadAllAsync(cts.Token))
        {
            result.Add(frame);
        }

        var after = await agent.Client.GetStatusAsync(new GetStatusRequest(), cancellationToken: cts.Token);
        Assert.Equal(0, after.RunningCommands);
        Assert.True(after.LastActivityUnixMillis >= during.LastActivityUnixMillis);
    }

    internal static async Task WaitForNoRunningCommandsAsync(TestAgent agent, CancellationToken cancellationToken)
    {
        while (true)
        {
            var status = await agent.Client.GetStatusAsync(new GetStatusRequest(), cancellationToken: cancellationToken);
            if (status.RunningCommands == 0)
            {
                return;
            }

            await Task.Delay(50, cancellationToken);
        }
    }
}
