using Grpc.Core;
using Rbs.Agent.Execution;
using Rbs.V1;

namespace Rbs.Tests.Agent;

/// <summary>
/// Issue 10 defect 7: what the ExecuteCommand protocol refuses — a second start frame (ignored silently before) and a
/// forwarded environment beyond the documented limits (100,000 LC_* variables stalled bazel). Real agent host, real
/// fake-bazel processes.
/// </summary>
public sealed class ProtocolLimitsTests(ITestOutputHelper output)
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task ASecondStartFrameInterruptsTheRunningCommandAndEndsTheCallWithInvalidArgument()
    {
        await using var agent = await TestAgent.StartAsync(output);
        using var cts = new CancellationTokenSource(s_timeout);
        using var call = agent.Client.ExecuteCommand(cancellationToken: cts.Token);
        await call.RequestStream.WriteAsync(new ClientFrame { Start = ExecuteCommandTests.Start("trap-int") }, cts.Token);
        var result = new CommandResult();
        await CommandResult.ReadUntilStdoutContainsAsync(call, result, "ready", cts.Token);

        await call.RequestStream.WriteAsync(new ClientFrame { Start = ExecuteCommandTests.Start("exit", "0") }, cts.Token);

        var error = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            await foreach (var frame in call.ResponseStream.ReadAllAsync(cts.Token))
            {
                result.Add(frame);
            }
        });
        output.WriteLine($"status: {error.Status}");
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains("a second 'start' frame arrived", error.Status.Detail, StringComparison.Ordinal);
        // The running command was stopped as by Ctrl-C (fake bazel exits 8 on SIGINT), and the status says so.
        Assert.Contains("was interrupted and ended with exit code 8", error.Status.Detail, StringComparison.Ordinal);
        Assert.Null(result.Exit);
        Assert.Contains("ready", result.StdoutText, StringComparison.Ordinal);
        // The second start ran nothing, and the agent still serves the next call.
        Assert.Equal(0, (await agent.RunAsync(ExecuteCommandTests.Start("exit", "0"), s_timeout)).Exit?.Code);
    }

    [Fact]
    public async Task AHundredThousandEnvironmentVariablesAreRefusedBeforeAnythingRuns()
    {
        await using var agent = await TestAgent.StartAsync(output);
        var marker = Path.Combine(agent.Workspace, "ran");
        var start = ExecuteCommandTests.Start("flood", "0", marker);
        for (var i = 0; i < 100_000; i++)
        {
            start.Env[$"LC_X{i}"] = "C";
        }

        var error = await Assert.ThrowsAsync<RpcException>(() => agent.RunAsync(start, s_timeout));

        output.WriteLine($"status: {error.Status}");
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains($"the start frame's env has 100000 variables; an agent accepts at most {ToolEnvironment.MaxVariables}", error.Status.Detail, StringComparison.Ordinal);
        Assert.False(File.Exists(marker));
    }

    [Fact]
    public async Task AnOversizedEnvironmentIsRefusedNamingItsLargestVariable()
    {
        await using var agent = await TestAgent.StartAsync(output);
        var start = ExecuteCommandTests.Start("exit", "0");
        start.Env["LANG"] = "C.UTF-8";
        start.Env["LC_HUGE"] = new string('x', 100_000);

        var error = await Assert.ThrowsAsync<RpcException>(() => agent.RunAsync(start, s_timeout));

        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains($"an agent accepts at most {ToolEnvironment.MaxTotalBytes}. The largest variable is LC_HUGE (100007 bytes)", error.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task TheDocumentedLimitsAreAccepted()
    {
        await using var agent = await TestAgent.StartAsync(output);
        var start = ExecuteCommandTests.Start("exit", "0");
        for (var i = 0; i < ToolEnvironment.MaxVariables; i++)
        {
            start.Env[$"LC_X{i}"] = "C";
        }

        Assert.Equal(0, (await agent.RunAsync(start, s_timeout)).Exit?.Code);
    }
}
