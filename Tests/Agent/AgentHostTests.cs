using System.Diagnostics;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;
using Rbs.Agent.Execution;
using Rbs.Agent.Hosting;
using Rbs.Shared.Hosting;
using Rbs.Tests.Infrastructure;
using Rbs.V1;
using static Rbs.Tests.Agent.ExecuteCommandTests;

namespace Rbs.Tests.Agent;

public sealed class AgentHostTests(ITestOutputHelper output)
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task ReadyFileIsWrittenAtomicallyWithTheBoundAddress()
    {
        var dir = Directory.CreateTempSubdirectory("rbs-agent-ready-");
        try
        {
            var readyFile = Path.Combine(dir.FullName, "nested", "ready.json");
            await using var agent = await TestAgent.StartAsync(output, "--ready-file", readyFile);

            output.WriteLine(await File.ReadAllTextAsync(readyFile));
            var ready = ReadyFile.TryRead<AgentReadyFile>(readyFile);
            Assert.Equal(new AgentReadyFile(TestAgent.AgentId, Environment.ProcessId, agent.Address), ready);
            Assert.Matches(@"^http://127\.0\.0\.1:[1-9][0-9]*$", agent.Address);
            Assert.False(File.Exists(readyFile + ".tmp"));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task GrpcHealthServiceReportsServing()
    {
        await using var agent = await TestAgent.StartAsync(output);
        var health = new Health.HealthClient(agent.Channel);
        var response = await health.CheckAsync(new HealthCheckRequest(), deadline: DateTime.UtcNow.Add(s_timeout));
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, response.Status);
    }

    [Fact]
    public async Task ReadinessFollowsTheWorkspaceAndLivenessStaysUp()
    {
        await using var agent = await TestAgent.StartAsync(output);
        var health = new Health.HealthClient(agent.Channel);
        using var http = new HttpClient { DefaultRequestVersion = System.Net.HttpVersion.Version20, DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact };
        Assert.Equal(System.Net.HttpStatusCode.OK, (await http.GetAsync(agent.Address + "/readyz").WaitAsync(s_timeout)).StatusCode);

        // The workspace goes away underneath (an unmounted volume, a deleted directory): commands cannot run.
        var moved = agent.Workspace + ".moved";
        Directory.Move(agent.Workspace, moved);
        try
        {
            using var readyz = await http.GetAsync(agent.Address + "/readyz").WaitAsync(s_timeout);
            Assert.Equal(System.Net.HttpStatusCode.ServiceUnavailable, readyz.StatusCode);
            Assert.Contains("workspace: Unhealthy", await readyz.Content.ReadAsStringAsync(), StringComparison.Ordinal);
            Assert.Equal(HealthCheckResponse.Types.ServingStatus.NotServing,
                (await health.CheckAsync(new HealthCheckRequest(), deadline: DateTime.UtcNow.Add(s_timeout))).Status);
            Assert.Equal(System.Net.HttpStatusCode.OK, (await http.GetAsync(agent.Address + "/healthz").WaitAsync(s_timeout)).StatusCode);
            Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving,
                (await health.CheckAsync(new HealthCheckRequest { Service = "liveness" }, deadline: DateTime.UtcNow.Add(s_timeout))).Status);
        }
        finally
        {
            Directory.Move(moved, agent.Workspace);
        }

        Assert.Equal(System.Net.HttpStatusCode.OK, (await http.GetAsync(agent.Address + "/readyz").WaitAsync(s_timeout)).StatusCode);
    }

    [Fact]
    public async Task ListenerIsHttp2Only()
    {
        await using var agent = await TestAgent.StartAsync(output);
        using var http = new HttpClient();
        using var request = new HttpRequestMessage(HttpMethod.Get, agent.Address) { Version = System.Net.HttpVersion.Version11, VersionPolicy = HttpVersionPolicy.RequestVersionExact };
        using var response = await http.SendAsync(request).WaitAsync(s_timeout);
        var body = await response.Content.ReadAsStringAsync();
        output.WriteLine($"HTTP/1.1 request -> {(int)response.StatusCode} {body}");
        // Kestrel's answer on an Http2-only endpoint (with HTTP/1.1 enabled it would route the request: 404).
        Assert.Equal(System.Net.HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Contains("HTTP/2 only endpoint", body, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(new[] { "--workspace", "/tmp" }, "Agent:AgentId is required (--agent-id)")]
    [InlineData(new[] { "--agent-id", "a" }, "Agent:Workspace is required")]
    [InlineData(new[] { "--agent-id", "a", "--workspace", "relative/path" }, "must be an absolute path")]
    [InlineData(new[] { "--agent-id", "a", "--workspace", "/nonexistent/rbs-agent-test" }, "does not exist")]
    [InlineData(new[] { "--agent-id", "a", "--workspace", "/tmp", "--build-tool", "no-such-tool-rbs" }, "was not found on PATH")]
    [InlineData(new[] { "--agent-id", "a", "--workspace", "/tmp", "--build-tool", "/bin/sh", "--listen", "nohost" }, "Agent:Listen 'nohost'")]
    public async Task InvalidConfigurationFailsAtStartWithTheFlagToFix(string[] args, string message)
    {
        await using var app = AgentHost.Build(args, builder => builder.Logging.ClearProviders());
        var ex = await Assert.ThrowsAsync<OptionsValidationException>(() => app.StartAsync().WaitAsync(s_timeout));
        output.WriteLine(ex.Message);
        Assert.Contains(message, ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void FlagsMapOntoTheAgentSection()
    {
        var builder = AgentHost.CreateBuilder(
        [
            "--agent-id", "id1", "--workspace", "/w", "--build-tool", "/usr/bin/bazel", "--listen", "0.0.0.0:9011",
            "--ready-file", "/r.json", "--idle-exit-after", "06:00:00", "--interrupt-grace-period", "00:00:03",
        ]);
        var options = new AgentOptions();
        builder.Configuration.GetSection(AgentOptions.SectionName).Bind(options);
        Assert.Equal("id1", options.AgentId);
        Assert.Equal("/w", options.Workspace);
        Assert.Equal("/usr/bin/bazel", options.BuildTool);
        Assert.Equal("0.0.0.0:9011", options.Listen);
        Assert.Equal("/r.json", options.ReadyFile);
        Assert.Equal(TimeSpan.FromHours(6), options.IdleExitAfter);
        Assert.Equal(TimeSpan.FromSeconds(3), options.InterruptGracePeriod);
    }

    [Fact]
    public async Task IdleExitWaitsForRunningCommandsAndThenStopsTheAgent()
    {
        var time = new FakeTimeProvider(DateTimeOffset.UtcNow);
        var workspace = Directory.CreateTempSubdirectory("rbs-agent-ws-");
        await using var app = AgentHost.Build(
            ["--agent-id", "idle", "--workspace", workspace.FullName, "--build-tool", FakeBazel.Path, "--idle-exit-after", "00:10:00"],
            builder =>
            {
                builder.Logging.ClearProviders();
                builder.Logging.AddProvider(new TestOutputLoggerProvider(output));
                builder.Services.AddSingleton<TimeProvider>(time);
            });
        await app.StartAsync().WaitAsync(s_timeout);
        var stopping = app.Services.GetRequiredService<IHostApplicationLifetime>().ApplicationStopping;
        var address = Rbs.Agent.Lifetime.AgentReadyAnnouncer.BoundAddress(app.Services.GetRequiredService<Microsoft.AspNetCore.Hosting.Server.IServer>())!;
        using var channel = GrpcChannel.ForAddress(address);
        var client = new Rbs.V1.Agent.AgentClient(channel);
        using var cts = new CancellationTokenSource(s_timeout);
        try
        {
            using var call = client.ExecuteCommand(cancellationToken: cts.Token);
            await call.RequestStream.WriteAsync(new ClientFrame { Start = Start("trap-int") }, cts.Token);
            var result = new CommandResult();
            await CommandResult.ReadUntilStdoutContainsAsync(call, result, "ready", cts.Token);

            // A running command keeps the agent alive however long it runs.
            await AdvanceAsync(time, TimeSpan.FromMinutes(25));
            Assert.False(stopping.IsCancellationRequested, "the agent stopped itself while a command was running");

            await call.RequestStream.WriteAsync(new ClientFrame { Interrupt = new Interrupt() }, cts.Token);
            await foreach (var frame in call.ResponseStream.ReadAllAsync(cts.Token))
            {
                result.Add(frame);
            }

            Assert.Equal(8, result.Exit?.Code);
            await TestWait.EventuallyAsync(() => app.Services.GetRequiredService<CommandTracker>().RunningCount == 0);

            await AdvanceAsync(time, TimeSpan.FromMinutes(9));
            Assert.False(stopping.IsCancellationRequested, "the agent stopped before IdleExitAfter had passed since the last command");
            await AdvanceAsync(time, TimeSpan.FromMinutes(3));
            await TestWait.EventuallyAsync(() => stopping.IsCancellationRequested);
        }
        finally
        {
            await app.StopAsync(CancellationToken.None);
            workspace.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task SigtermInterruptsRunningCommandsAndExitsZero()
    {
        var dir = Directory.CreateTempSubdirectory("rbs-agent-proc-");
        var readyFile = Path.Combine(dir.FullName, "ready.json");
        using var agent = StartAgentProcess(
            "--agent-id", "sigterm", "--workspace", dir.FullName, "--build-tool", FakeBazel.Path, "--ready-file", readyFile);
        try
        {
            var address = await WaitForReadyFileAsync(readyFile, agent);
            using var channel = GrpcChannel.ForAddress(address);
            var client = new Rbs.V1.Agent.AgentClient(channel);
            using var cts = new CancellationTokenSource(s_timeout);
            using var call = client.ExecuteCommand(cancellationToken: cts.Token);
            await call.RequestStream.WriteAsync(new ClientFrame { Start = Start("trap-int") }, cts.Token);
            var result = new CommandResult();
            await CommandResult.ReadUntilStdoutContainsAsync(call, result, "ready", cts.Token);

            Assert.Equal(0, Native.kill(agent.Id, Native.SIGTERM));
            await foreach (var frame in call.ResponseStream.ReadAllAsync(cts.Token))
            {
                result.Add(frame);
            }

            // The command saw Ctrl-C (bazel's 8) and its exit frame still reached the client.
            Assert.Equal(8, result.Exit?.Code);
            await agent.WaitForExitAsync(cts.Token);
            Assert.Equal(0, agent.ExitCode);
            Assert.True(Processes.IsGone(result.Started!.Pid));
        }
        finally
        {
            KillIfRunning(agent);
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task IdleAgentProcessExitsByItself()
    {
        var dir = Directory.CreateTempSubdirectory("rbs-agent-proc-");
        var readyFile = Path.Combine(dir.FullName, "ready.json");
        using var agent = StartAgentProcess(
            "--agent-id", "idle-proc", "--workspace", dir.FullName, "--build-tool", FakeBazel.Path,
            "--ready-file", readyFile, "--idle-exit-after", "00:00:01");
        try
        {
            await WaitForReadyFileAsync(readyFile, agent);
            await agent.WaitForExitAsync().WaitAsync(s_timeout);
            Assert.Equal(0, agent.ExitCode);
        }
        finally
        {
            KillIfRunning(agent);
            dir.Delete(recursive: true);
        }
    }

    private Process StartAgentProcess(params string[] args)
    {
        var info = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "rbs-agent"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        info.Environment["Logging__Console__FormatterName"] = "simple";
        var process = Process.Start(info)!;
        process.OutputDataReceived += (_, e) => TestLog.Write(output, "agent> " + e.Data);
        process.ErrorDataReceived += (_, e) => TestLog.Write(output, "agent! " + e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    private static async Task<string> WaitForReadyFileAsync(string readyFile, Process agent)
    {
        var deadline = DateTime.UtcNow + s_timeout;
        AgentReadyFile? ready;
        while ((ready = ReadyFile.TryRead<AgentReadyFile>(readyFile)) is null)
        {
            Assert.False(agent.HasExited, $"the agent exited with {(agent.HasExited ? agent.ExitCode : 0)} before writing its ready file");
            Assert.True(DateTime.UtcNow < deadline, "no ready file within 30 s");
            await Task.Delay(50);
        }

        Assert.Equal(agent.Id, ready.Pid);
        return ready.Address;
    }

    private static void KillIfRunning(Process process)
    {
        if (!process.HasExited)
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit(5000);
        }
    }

    private static async Task AdvanceAsync(FakeTimeProvider time, TimeSpan by)
    {
        // In one-minute steps, letting the agent's timer continuations run (and re-arm) between steps.
        for (var step = TimeSpan.Zero; step < by; step += TimeSpan.FromMinutes(1))
        {
            time.Advance(TimeSpan.FromMinutes(1));
            await Task.Delay(20);
        }
    }
}
