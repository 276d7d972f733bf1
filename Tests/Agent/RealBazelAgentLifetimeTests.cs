using System.Diagnostics;
using System.Globalization;
using Grpc.Core;
using Rbs.Agent.Execution;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.Orchestrator.Infrastructure;
using Rbs.V1;
using static Rbs.Tests.Agent.ExecuteCommandTests;

namespace Rbs.Tests.Agent;

/// <summary>
/// Issue 10, defect 4 with real bazel 4.2.3 and real rbs-agent processes: a command dies with its agent (kill -9 during
/// a slow genrule: bazel's client and the action are gone within seconds, and a replacement agent on the same
/// workspace builds without waiting behind them), and stopping or reaping an agent shuts its bazel server down.
/// </summary>
public sealed class RealBazelAgentLifetimeTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const string Bazel = "/usr/bin/bazel";
    private static readonly TimeSpan s_buildTimeout = TimeSpan.FromSeconds(240);
    private static readonly TimeSpan s_goneTimeout = TimeSpan.FromSeconds(20);

    private readonly string _root = Directory.CreateTempSubdirectory("rbs-bazel-life-").FullName;
    private readonly string _token = $"rbs{Guid.NewGuid():N}"[..16];

    /// <summary>The slow action's command line, unique to this test (fractional seconds): how its processes are found.</summary>
    private readonly string _slowAction = $"sleep 600.{Random.Shared.Next(100_000_000, 999_999_999)}";

    private string Workspace => Path.Combine(_root, "ws");

    /// <summary>Its own output root, so this test's bazel server is nobody else's.</summary>
    private string OutputUserRoot => Path.Combine(_root, "out");

    public Task InitializeAsync()
    {
        Directory.CreateDirectory(Workspace);
        File.WriteAllText(Path.Combine(Workspace, "WORKSPACE"), "workspace(name = \"lifetime\")\n");
        File.WriteAllText(Path.Combine(Workspace, "BUILD"), $"""
            genrule(name = "slow", outs = ["slow.txt"], cmd = "{_slowAction}; touch $@", tags = ["no-cache"])
            genrule(name = "fast", outs = ["fast.txt"], cmd = "echo {_token} > $@")
            """);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        // Whatever a failed test left: the bazel clients and actions first (a shutdown would wait behind them), then this
        // test's server (its own output root), then anything else still running under this test's directory.
        foreach (var pid in ProcessesMentioning(_slowAction).Concat(ProcessesMentioning($"{OutputUserRoot} build")))
        {
            Native.kill(pid, Native.SIGKILL);
        }

        if (File.Exists(Bazel))
        {
            using var shutdown = Process.Start(new ProcessStartInfo(Bazel) { ArgumentList = { $"--output_user_root={OutputUserRoot}", "shutdown" }, WorkingDirectory = Workspace, UseShellExecute = false, RedirectStandardError = true });
            try
            {
                await shutdown!.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(120));
            }
            catch (TimeoutException)
            {
                shutdown!.Kill();
            }
        }

        foreach (var pid in ProcessesMentioning(_root))
        {
            Native.kill(pid, Native.SIGKILL);
        }

        try
        {
            Directory.Delete(_root, recursive: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // bazel makes parts of its output base read-only; the temp dir is harmless.
        }
    }

    [SkippableTheory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task KillingTheAgentMidBuildEndsBazelsClientAndTheActionAndTheNextAgentBuildsAtOnce(bool onTerminal)
    {
        Skip.IfNot(File.Exists(Bazel), "bazel is not installed at /usr/bin/bazel");
        int client;
        await using (var agent = await AgentProcess.StartAsync(output, "doomed", Workspace, Bazel))
        {
            using var cts = new CancellationTokenSource(s_buildTimeout);
            // Quiet while the action runs: without it bazel's client would write progress into the dead agent's pipes
            // and stop on the SIGPIPE at some point; nothing may depend on that.
            var start = Build("//:slow", onTerminal, "--noshow_progress");
            using var call = await agent.StartCommandAsync(start, cts.Token);
            var result = new CommandResult();
            var reading = DrainAsync(call, result, cts.Token);
            await WaitUntilAsync(() => ProcessesMentioning(_slowAction).Count > 0, s_buildTimeout, () => result.StderrText);
            client = result.Started!.Pid;
            TestLog.Write(output, $"bazel client pid {client}; action running; kill -9 agent {agent.Pid}");

            agent.Signal(Native.SIGKILL);
            await agent.WaitForExitAsync(TimeSpan.FromSeconds(10));
            await reading;
        }

        // PR_SET_PDEATHSIG: bazel's client gets SIGTERM, cancels the command on its server, which stops the action.
        await WaitUntilAsync(() => Processes.IsGone(client), s_goneTimeout, () => $"bazel client {client} still running");
        await WaitUntilAsync(() => ProcessesMentioning(_slowAction).Count == 0, s_goneTimeout, () => "the action is still running");

        // The replacement agent's first build does not wait behind the dead agent's command.
        await using var replacement = await AgentProcess.StartAsync(output, "replacement", Workspace, Bazel);
        using var buildCts = new CancellationTokenSource(s_buildTimeout);
        using var buildCall = await replacement.StartCommandAsync(Build("//:fast", onTerminal), buildCts.Token);
        var build = await CommandResult.ReadToEndAsync(buildCall, buildCts.Token).WaitAsync(s_buildTimeout);
        TestLog.Write(output, build.StderrText);
        Assert.Equal(0, build.Exit?.Code);
        Assert.DoesNotContain("Another command", build.StderrText, StringComparison.Ordinal);
    }

    [SkippableFact]
    public async Task StoppingAnAgentShutsItsBazelServerDown()
    {
        Skip.IfNot(File.Exists(Bazel), "bazel is not installed at /usr/bin/bazel");
        await using var agent = await AgentProcess.StartAsync(output, "stopped", Workspace, Bazel);
        using var cts = new CancellationTokenSource(s_buildTimeout);
        using (var call = await agent.StartCommandAsync(Build("//:fast", onTerminal: false), cts.Token))
        {
            var build = await CommandResult.ReadToEndAsync(call, cts.Token).WaitAsync(s_buildTimeout);
            Assert.Equal(0, build.Exit?.Code);
        }

        var server = ServerPid();
        TestLog.Write(output, $"bazel server pid {server}");
        Assert.False(Processes.IsGone(server));

        // How the orchestrator's reaper and StopAsync end an agent, and how Kubernetes ends a pod.
        agent.Signal(Native.SIGTERM);
        await agent.WaitForExitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(0, agent.ExitCode);
        // The agent waited for `bazel shutdown`, which returns once the server is gone.
        await WaitUntilAsync(() => Processes.IsGone(server), TimeSpan.FromSeconds(5), () => $"bazel server {server} still running");
    }

    [SkippableFact]
    public async Task TheReaperStoppingAnIdleAgentShutsItsBazelServerDown()
    {
        Skip.IfNot(File.Exists(Bazel), "bazel is not installed at /usr/bin/bazel");
        await using var context = new ReaperContext(output);
        var orchestrator = await context.Context.StartOrchestratorAsync(
            Path.Combine(AppContext.BaseDirectory, "rbs-agent"),
            extraArgs: ["--idle-ttl", "00:00:02", "--reap-interval", "00:00:00.250"]);
        var allocation = await orchestrator.GetServerAsync("repo-bazel", Workspace);

        int server;
        using (var channel = Grpc.Net.Client.GrpcChannel.ForAddress(allocation.Address))
        {
            var client = new Rbs.V1.Agent.AgentClient(channel);
            using var cts = new CancellationTokenSource(s_buildTimeout);
            using var call = client.ExecuteCommand(cancellationToken: cts.Token);
            await call.RequestStream.WriteAsync(new ClientFrame { Start = Build("//:fast", onTerminal: false) }, cts.Token);
            var build = await CommandResult.ReadToEndAsync(call, cts.Token).WaitAsync(s_buildTimeout);
            Assert.Equal(0, build.Exit?.Code);
            server = ServerPid();
        }

        var agentPid = int.Parse(allocation.BackendRef, CultureInfo.InvariantCulture);
        TestLog.Write(output, $"agent {agentPid}, bazel server {server}: waiting for the reaper");
        await WaitUntilAsync(() => Processes.IsGone(agentPid), TimeSpan.FromSeconds(90), () => "the reaper did not stop the agent");
        await WaitUntilAsync(() => Processes.IsGone(server), TimeSpan.FromSeconds(5), () => $"bazel server {server} outlived its reaped agent");
    }

    private StartCommand Build(string target, bool onTerminal, params string[] options)
    {
        var start = Start([$"--output_user_root={OutputUserRoot}", "build", .. options, target]);
        return onTerminal ? TerminalTests.OnTerminal(start, stdin: true, stdout: true, columns: 100, rows: 30) : start;
    }

    private int ServerPid()
    {
        var file = Directory.EnumerateFiles(OutputUserRoot, "server.pid.txt", SearchOption.AllDirectories).Single();
        return int.Parse(File.ReadAllText(file).Trim(), CultureInfo.InvariantCulture);
    }

    private static async Task DrainAsync(AsyncDuplexStreamingCall<ClientFrame, ServerFrame> call, CommandResult result, CancellationToken cancellationToken)
    {
        try
        {
            await foreach (var frame in call.ResponseStream.ReadAllAsync(cancellationToken))
            {
                result.Add(frame);
            }
        }
        catch (RpcException)
        {
            // The agent was killed: the stream breaks, as it should.
        }
    }

    private static async Task WaitUntilAsync(Func<bool> condition, TimeSpan timeout, Func<string> describe)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                Assert.Fail($"not within {timeout}: {describe()}");
            }

            await Task.Delay(100);
        }
    }

    /// <summary>Live processes (not zombies) whose command line contains <paramref name="text"/>.</summary>
    private static List<int> ProcessesMentioning(string text)
    {
        var found = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) || pid == Environment.ProcessId)
            {
                continue;
            }

            try
            {
                var cmdline = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ');
                if (cmdline.Contains(text, StringComparison.Ordinal) && !Processes.IsGone(pid))
                {
                    found.Add(pid);
                }
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
            }
        }

        return found;
    }

    /// <summary>An orchestrator test context disposed with this test (it kills the agents it spawned).</summary>
    private sealed class ReaperContext(ITestOutputHelper output) : IAsyncDisposable
    {
        public OrchestratorTestContext Context { get; } = new(output);

        public async ValueTask DisposeAsync() => await Context.DisposeAsync();
    }
}
