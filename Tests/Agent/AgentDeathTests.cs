using System.Globalization;
using System.Runtime.InteropServices;
using Grpc.Core;
using Rbs.Agent.Execution;
using Rbs.V1;
using static Rbs.Tests.Agent.ExecuteCommandTests;

namespace Rbs.Tests.Agent;

/// <summary>
/// A command dies with its agent (issue 10, defect 4): the tool gets SIGTERM through PR_SET_PDEATHSIG however the
/// agent dies, and only then; a graceful stop shuts the build tool's servers down. Real rbs-agent processes and
/// fake-bazel.sh here; RealBazelAgentLifetimeTests does the same with bazel.
/// </summary>
public sealed partial class AgentDeathTests(ITestOutputHelper output)
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(30);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task TheToolDiesWhenItsAgentIsKilled(bool onTerminal)
    {
        var workspace = Directory.CreateTempSubdirectory("rbs-agent-death-");
        try
        {
            int tool;
            await using (var agent = await AgentProcess.StartAsync(output, "death", workspace.FullName, FakeBazel.Path))
            {
                using var cts = new CancellationTokenSource(s_timeout);
                var start = Start("sleep");
                if (onTerminal)
                {
                    start = TerminalTests.OnTerminal(start, stdin: true, stdout: false);
                }

                using var call = await agent.StartCommandAsync(start, cts.Token);
                var result = new CommandResult();
                await CommandResult.ReadUntilStdoutContainsAsync(call, result, "ready", cts.Token);
                tool = result.Started!.Pid;
                Assert.False(Processes.IsGone(tool));

                agent.Signal(Native.SIGKILL);
                await agent.WaitForExitAsync(s_timeout);
            }

            // Nobody is left to interrupt it: the kernel's parent-death signal must.
            await Processes.WaitGoneAsync(tool, TimeSpan.FromSeconds(10));
        }
        finally
        {
            workspace.Delete(recursive: true);
        }
    }

    [SkippableFact]
    public async Task AToolSpawnedForAThreadThatEndsKeepsRunning()
    {
        // PR_SET_PDEATHSIG fires when the spawning *thread* exits: a thread-pool thread that retires would kill a
        // healthy command. Every spawn runs on one long-lived thread instead, whoever asks for it.
        Skip.If(ToolProcess.ParentDeathWrapper is null, "setpriv (util-linux) is not installed");
        var workspace = Directory.CreateTempSubdirectory("rbs-agent-spawn-");
        ToolProcess? process = null;
        var callerTid = 0;
        try
        {
            var caller = new Thread(() =>
            {
                callerTid = GetThreadId();
                var info = new ToolStartInfo(FakeBazel.Path, "bazel", ["sleep"], workspace.FullName, new Dictionary<string, string>(StringComparer.Ordinal))
                {
                    DiesWithAgent = true,
                };
                process = ToolProcess.StartAsync(info).GetAwaiter().GetResult();
            });
            caller.Start();
            caller.Join();
            Assert.NotNull(process);

            // The kernel sends the parent-death signal while the thread exits, before its task leaves /proc.
            var deadline = DateTime.UtcNow + s_timeout;
            while (Directory.Exists($"/proc/self/task/{callerTid}"))
            {
                Assert.True(DateTime.UtcNow < deadline, "the calling thread did not exit");
                await Task.Delay(20);
            }

            Assert.False(Processes.IsGone(process.Pid));
            Assert.False(HasPendingSigterm(process.Pid), File.ReadAllText($"/proc/{process.Pid}/status"));
        }
        finally
        {
            process?.KillTree();
            if (process is not null)
            {
                await process.Exited.WaitAsync(s_timeout);
                process.Dispose();
            }

            workspace.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task StoppingTheAgentShutsDownTheBuildToolForEveryStartupOptionSetItUsed()
    {
        var agent = await TestAgent.StartAsync(output);
        var workspace = agent.Workspace;
        try
        {
            foreach (var args in (string[][])[["exit", "0"], ["--output_base=/a", "exit", "0"], ["--output_base=/b", "--x", "exit", "1"], ["exit", "0"]])
            {
                var result = await agent.RunAsync(Start(args), s_timeout);
                Assert.NotNull(result.Exit);
            }
        }
        finally
        {
            await agent.App.StopAsync(new CancellationTokenSource(s_timeout).Token);
        }

        // Most recent first; each distinct set once.
        var shutdowns = await File.ReadAllLinesAsync(Path.Combine(workspace, ".fake-bazel-shutdowns"));
        Assert.Equal(["startup=[]", "startup=[--output_base=/b --x]", "startup=[--output_base=/a]"], shutdowns);
        await agent.DisposeAsync();
    }

    [Fact]
    public async Task AZeroBuildToolShutdownTimeoutLeavesTheServersRunning()
    {
        var agent = await TestAgent.StartAsync(output, "--build-tool-shutdown-timeout", "00:00:00");
        var workspace = agent.Workspace;
        var result = await agent.RunAsync(Start("exit", "0"), s_timeout);
        Assert.Equal(0, result.Exit?.Code);
        await agent.App.StopAsync(new CancellationTokenSource(s_timeout).Token);

        Assert.False(File.Exists(Path.Combine(workspace, ".fake-bazel-shutdowns")));
        await agent.DisposeAsync();
    }

    private static bool HasPendingSigterm(int pid)
    {
        const ulong sigterm = 1UL << (15 - 1);
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
        {
            if (line.StartsWith("SigPnd:", StringComparison.Ordinal) || line.StartsWith("ShdPnd:", StringComparison.Ordinal))
            {
                if ((ulong.Parse(line[7..].Trim(), NumberStyles.HexNumber, CultureInfo.InvariantCulture) & sigterm) != 0)
                {
                    return true;
                }
            }
        }

        return false;
    }

    private static int GetThreadId() => gettid();

    [LibraryImport("libc")]
    private static partial int gettid();
}
