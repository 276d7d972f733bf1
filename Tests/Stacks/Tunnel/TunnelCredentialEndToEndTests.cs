using System.Diagnostics;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Rbs.Orchestrator.Compute.Processes;
using Rbs.Orchestrator.Security;
using Rbs.Shared.Hosting;
using Rbs.Shared.Protocol;
using Rbs.Shared.Tokens;
using Rbs.Tests.Agent;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.JBazel;
using Rbs.V1;

namespace Rbs.Tests.Stacks.Tunnel;

/// <summary>
/// Issue 10 defects 1 and 3 with real processes: rbs-gateway, rbs-orchestrator, real rbs-agents and the real jbazel.
/// Token lifetimes are made short by the same options an operator sets (seconds, not the default minutes), so "idle
/// for longer than every token the agent was given" takes seconds.
/// </summary>
public sealed class TunnelCredentialEndToEndTests(ITestOutputHelper output) : IDisposable
{
    private static readonly TimeSpan s_renewalLifetime = TimeSpan.FromSeconds(4);
    private static readonly TimeSpan s_joinLifetime = TimeSpan.FromSeconds(8);

    // Long enough for every token handed out or renewed before it to have expired.
    private static readonly TimeSpan s_pastEveryToken = s_joinLifetime + (s_renewalLifetime * 1.5);
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(60);

    // The reproduction (30 s / 15 s), scaled down: the gateway renews for 4 s, the orchestrator's token lives 8 s
    // (long enough for a cold agent to dial in under load even without the fix, so the failure shown is the idle one).
    private static readonly Dictionary<string, string> s_shortLifetimes = new(StringComparer.Ordinal)
    {
        ["Gateway__JoinTokenRenewalLifetime"] = "00:00:04",
        ["Orchestrator__Gateway__JoinTokenLifetime"] = "00:00:08",
        // No clock-skew allowance (default 30 s, for hosts whose clocks differ): one machine, and the tests wait for
        // expiry itself.
        ["Gateway__TokenClockSkew"] = "00:00:00",
        ["Orchestrator__Gateway__TokenClockSkew"] = "00:00:00",
    };

    private readonly TempWorkspace _alice = new();
    private readonly TempWorkspace _bob = new();

    public void Dispose()
    {
        _alice.Dispose();
        _bob.Dispose();
    }

    [Fact]
    public async Task IdleAgentOutlivesEveryTokenItWasGivenAndTheNextBuildRunsOnIt()
    {
        // One stream per tunnel: every concurrent command takes a spare of its own, so the agent must dial again.
        await using var stack = await TunnelStack.StartAsync(Log, environment: new Dictionary<string, string>(s_shortLifetimes, StringComparer.Ordinal)
        {
            ["Agent__Tunnel__MaxStreamsPerTunnel"] = "1",
        });
        var first = await BuildAsync(stack, _alice, TunnelStack.AliceKey);
        Assert.Equal("cold", first.Warmth);

        // The scenario itself: the agent sits idle until every token it was handed (8 s) or renewed (4 s) at its last
        // dial has expired.
        await Task.Delay(s_pastEveryToken);

        // The next commands: one that runs for a while (cat until stdin closes, as a real build does) and one beside
        // it, which takes another spare, so the agent dials. That dial used to be refused: the agent stopped, SIGINTed
        // the running command (exit 130) and the other build failed.
        await using var running = JBazelProcess.Start(output, _alice.Root, _alice.Home, new Dictionary<string, string?>(),
            [$"--rbs_orchestrator={stack.PublicAddress}", "--rbs_connect=tunnel", "--rbs_status=always", "--rbs_timeout=60s", $"--rbs_api_key={TunnelStack.AliceKey}", "cat"]);
        await running.StandardInput.WriteAsync("still here\n"u8.ToArray()).AsTask().WaitAsync(s_timeout);
        await running.StandardInput.FlushAsync();
        await running.WaitForStdoutAsync("still here", s_timeout);

        var beside = await BuildAsync(stack, _alice, TunnelStack.AliceKey);
        Assert.Equal("warm", beside.Warmth);
        Assert.Equal(first.AgentId, beside.AgentId);

        await running.StandardInput.WriteAsync("and here\n"u8.ToArray()).AsTask().WaitAsync(s_timeout);
        await running.StandardInput.FlushAsync();
        await running.WaitForStdoutAsync("and here", s_timeout);
        running.StandardInput.Close();
        var exit = await running.WaitForExitAsync(s_timeout);
        Assert.True(exit == 0, $"jbazel exited {exit}: {running.StderrText}");
        Assert.Equal(first.AgentId, TunnelEndToEndTests.StatusLine(running.StderrText).AgentId);

        var third = await BuildAsync(stack, _alice, TunnelStack.AliceKey);
        Assert.Equal(first.AgentId, third.AgentId);
        Assert.NotEmpty(UnixProcesses.FindAgentProcesses(first.AgentId));
    }

    [Fact]
    public async Task AfterAGatewayOutageLongerThanTheTokenLifetimeEveryAgentIsFoundAgainAndBuildsRightAfterSucceed()
    {
        await using var stack = await TunnelStack.StartAsync(Log, environment: s_shortLifetimes);
        var alice = await BuildAsync(stack, _alice, TunnelStack.AliceKey);
        var bob = await BuildAsync(stack, _bob, TunnelStack.BobKey);
        Assert.NotEqual(alice.AgentId, bob.AgentId);

        await stack.KillGatewayAsync();
        // The outage outlasts every token the agents hold.
        await Task.Delay(s_pastEveryToken);
        await stack.RestartGatewayAsync();

        // Right away: GetServer answers only once the agent is registered again (asked with no wait at all).
        var response = await stack.GetServerAsync(TunnelStack.AliceKey, _alice.Root, ConnectMode.Tunnel,
            repoHash: Rbs.JBazel.Workspace.RepoHash.Compute(System.Net.Dns.GetHostName(), _alice.Root));
        Assert.Equal(alice.AgentId, response.AgentId);
        Assert.True(response.Warm);
        using (var registration = stack.RegistrationClient())
        {
            Assert.True(await registration.IsRegisteredAsync(alice.AgentId, TimeSpan.Zero, CancellationToken.None),
                "GetServer returned an agent that is not registered at the gateway");
        }

        // Builds started right after the restart: all succeed, on the same warm agents.
        for (var i = 0; i < 3; i++)
        {
            var again = await BuildAsync(stack, _alice, TunnelStack.AliceKey);
            Assert.Equal(alice.AgentId, again.AgentId);
            Assert.Equal("warm", again.Warmth);
        }

        var bobAgain = await BuildAsync(stack, _bob, TunnelStack.BobKey);
        Assert.Equal(bob.AgentId, bobAgain.AgentId);
        Assert.Equal("warm", bobAgain.Warmth);
    }

    [Fact]
    public async Task RefusedCredentialsNeverKillARunningCommandAndTheAgentStopsOnceIdleSayingWhy()
    {
        await using var stack = await TunnelStack.StartAsync(Log, environment: s_shortLifetimes);
        var tokens = new RbsTokenService(RbsTokenKeyRing.ReadKeyFile(stack.KeyFile), TimeProvider.System);
        // An agent the orchestrator does not know: once its tokens expire, the gateway has nobody to confirm it.
        var agentId = "a-unknown-" + Guid.NewGuid().ToString("N")[..8];
        var joinFile = Path.Combine(_alice.Base, "join");
        await File.WriteAllTextAsync(joinFile, tokens.Mint(RbsTokenKind.Join, agentId, "alice", s_joinLifetime));
        var readyFile = Path.Combine(_alice.Base, "agent.json");
        var logLines = new List<string>();
        using var agent = StartAgent(agentId, stack.AgentAddress, joinFile, readyFile, logLines);
        try
        {
            await WaitForFileAsync(readyFile, agent);
            // Read once at start-up, then gone from disk.
            Assert.False(File.Exists(joinFile), "the join token file outlived its use");

            using var channel = GrpcChannel.ForAddress(stack.PublicAddress);
            var client = new V1.Agent.AgentClient(channel);
            using var call = client.ExecuteCommand(Headers(agentId, tokens.Mint(RbsTokenKind.Session, agentId, "alice", TimeSpan.FromMinutes(5))));
            await call.RequestStream.WriteAsync(StartCat()).WaitAsync(s_timeout);
            Assert.True(await call.ResponseStream.MoveNext().WaitAsync(s_timeout));
            Assert.Equal(ServerFrame.FrameOneofCase.Started, call.ResponseStream.Current.FrameCase);
            Assert.Equal("one\n", await EchoAsync(call, "one\n"));

            // The agent misses its renewals (frozen) until all its tokens have expired; its next dial is refused.
            UnixProcesses.Signal(agent.Id, 19 /* SIGSTOP */);
            await Task.Delay(s_pastEveryToken);
            UnixProcesses.Signal(agent.Id, 18 /* SIGCONT */);
            // Its overdue renewal dials (and so would a second call, which needs another tunnel: one stream per tunnel
            // here); either dial is refused. The second call's own fate does not matter: the agent is being disowned.
            var trigger = client.GetStatusAsync(new GetStatusRequest(),
                Headers(agentId, tokens.Mint(RbsTokenKind.Session, agentId, "alice", TimeSpan.FromMinutes(5)))).ResponseAsync;
            await TestWait.EventuallyAsync(() => Contains(logLines, "refused this agent's credentials"), "the gateway refused the agent's expired credentials", s_timeout);

            // The command is untouched: it still echoes, and ends with its own exit code.
            Assert.False(agent.HasExited, "the agent exited while a command was running");
            Assert.Equal("two\n", await EchoAsync(call, "two\n"));
            await call.RequestStream.WriteAsync(new ClientFrame { StdinEof = new StdinEof() }).WaitAsync(s_timeout);
            await call.RequestStream.CompleteAsync();
            int? exit = null;
            while (await call.ResponseStream.MoveNext().WaitAsync(s_timeout))
            {
                if (call.ResponseStream.Current.FrameCase == ServerFrame.FrameOneofCase.Exit)
                {
                    exit = call.ResponseStream.Current.Exit.Code;
                }
            }

            Assert.Equal(0, exit);

            // Idle now: it stops by itself and its log says why.
            await agent.WaitForExitAsync().WaitAsync(s_timeout);
            try
            {
                await trigger.WaitAsync(s_timeout);
            }
            catch (RpcException e)
            {
                output.WriteLine($"the second call: {e.Status}");
            }

            Assert.True(Contains(logLines, "Stopping the agent: the gateway"), "the agent's log does not say why it stopped");
        }
        finally
        {
            if (!agent.HasExited)
            {
                UnixProcesses.Signal(agent.Id, 18);
                agent.Kill(entireProcessTree: true);
                await agent.WaitForExitAsync().WaitAsync(s_timeout);
            }
        }
    }

    [Fact]
    public async Task TheOrchestratorConfirmsOnlyLiveAgentsOfTheirOwnUserAndOnlyToTheGateway()
    {
        await using var stack = await TunnelStack.StartAsync(Log);
        var alice = await stack.GetServerAsync(TunnelStack.AliceKey, _alice.Root, ConnectMode.Tunnel);
        var internalToken = new RbsTokenService(RbsTokenKeyRing.ReadKeyFile(stack.KeyFile), TimeProvider.System)
            .Mint(RbsTokenKind.Internal, "gateway", "gateway", TimeSpan.FromMinutes(1));
        using var channel = GrpcChannel.ForAddress(stack.OrchestratorAddress);
        var directory = new AgentDirectory.AgentDirectoryClient(channel);
        var auth = new Metadata { { "authorization", "Bearer " + internalToken } };

        Assert.True((await directory.ConfirmAgentAsync(new ConfirmAgentRequest { AgentId = alice.AgentId, UserId = "alice" }, auth)).Live);
        var otherUser = await directory.ConfirmAgentAsync(new ConfirmAgentRequest { AgentId = alice.AgentId, UserId = "bob" }, auth);
        Assert.False(otherUser.Live);
        Assert.Contains("another user", otherUser.Reason, StringComparison.Ordinal);
        Assert.False((await directory.ConfirmAgentAsync(new ConfirmAgentRequest { AgentId = "a0000000000000000000", UserId = "alice" }, auth)).Live);

        var anonymous = await Assert.ThrowsAsync<RpcException>(() =>
            directory.ConfirmAgentAsync(new ConfirmAgentRequest { AgentId = alice.AgentId, UserId = "alice" }).ResponseAsync);
        Assert.Equal(StatusCode.Unauthenticated, anonymous.StatusCode);
        var withSessionToken = await Assert.ThrowsAsync<RpcException>(() => directory.ConfirmAgentAsync(
            new ConfirmAgentRequest { AgentId = alice.AgentId, UserId = "alice" }, new Metadata { { "authorization", "Bearer " + alice.SessionToken } }).ResponseAsync);
        Assert.Equal(StatusCode.Unauthenticated, withSessionToken.StatusCode);

        // The public endpoint does not route it: laptops cannot ask.
        using var publicChannel = GrpcChannel.ForAddress(stack.PublicAddress);
        var throughGateway = await Assert.ThrowsAsync<RpcException>(() => new AgentDirectory.AgentDirectoryClient(publicChannel)
            .ConfirmAgentAsync(new ConfirmAgentRequest { AgentId = alice.AgentId, UserId = "alice" }, auth).ResponseAsync.WaitAsync(s_timeout));
        Assert.Equal(StatusCode.Unimplemented, throughGateway.StatusCode);
    }

    private async Task<(string AgentId, string Warmth)> BuildAsync(TunnelStack stack, TempWorkspace workspace, string apiKey)
    {
        await using var jbazel = JBazelProcess.Start(output, workspace.Root, workspace.Home, new Dictionary<string, string?>(),
            [$"--rbs_orchestrator={stack.PublicAddress}", "--rbs_connect=tunnel", "--rbs_status=always", "--rbs_timeout=60s", $"--rbs_api_key={apiKey}", "exit", "0"]);
        jbazel.StandardInput.Close();
        var exit = await jbazel.WaitForExitAsync(s_timeout);
        Assert.True(exit == 0, $"jbazel exited {exit}: {jbazel.StderrText}");
        var status = TunnelEndToEndTests.StatusLine(jbazel.StderrText);
        return (status.AgentId, status.Warmth);
    }

    private Process StartAgent(string agentId, string gateway, string joinFile, string readyFile, List<string> logLines)
    {
        var info = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "rbs-agent")) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in new[] { "--agent-id", agentId, "--workspace", _alice.Root, "--build-tool", FakeBazel.Path,
            "--gateway", gateway, "--join-token-file", joinFile, "--ready-file", readyFile })
        {
            info.ArgumentList.Add(arg);
        }

        info.Environment["Agent__Tunnel__SpareConnections"] = "1";
        info.Environment["Agent__Tunnel__MaxStreamsPerTunnel"] = "1";
        info.Environment["Agent__Tunnel__MaxExtraSpares"] = "0";
        var process = Process.Start(info)!;
        void OnLine(string? line)
        {
            if (line is null)
            {
                return;
            }

            lock (logLines)
            {
                logLines.Add(line);
            }

            TestLog.Write(output, "[rbs-agent] " + line);
        }

        process.OutputDataReceived += (_, e) => OnLine(e.Data);
        process.ErrorDataReceived += (_, e) => OnLine(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    private static bool Contains(List<string> lines, string text)
    {
        lock (lines)
        {
            return lines.Any(l => l.Contains(text, StringComparison.Ordinal));
        }
    }

    private static async Task WaitForFileAsync(string path, Process process)
    {
        using var cts = new CancellationTokenSource(s_timeout);
        AgentReadyFile? ready;
        while ((ready = await ReadyFile.TryReadAsync<AgentReadyFile>(path, cts.Token)) is null)
        {
            Assert.False(process.HasExited, "rbs-agent exited before it was ready");
            await Task.Delay(25, cts.Token);
        }

        Assert.Equal("tunnel", ready.Address);
    }

    private static ClientFrame StartCat()
    {
        var start = new StartCommand { InvocationId = Guid.NewGuid().ToString() };
        start.Args.Add("cat");
        return new ClientFrame { Start = start };
    }

    private static async Task<string> EchoAsync(AsyncDuplexStreamingCall<ClientFrame, ServerFrame> call, string text)
    {
        await call.RequestStream.WriteAsync(new ClientFrame { Stdin = ByteString.CopyFromUtf8(text) }).WaitAsync(s_timeout);
        var received = new System.Text.StringBuilder();
        while (received.Length < text.Length)
        {
            Assert.True(await call.ResponseStream.MoveNext().WaitAsync(s_timeout), "the command's output ended");
            var frame = call.ResponseStream.Current;
            Assert.Equal(ServerFrame.FrameOneofCase.Stdout, frame.FrameCase);
            received.Append(frame.Stdout.ToStringUtf8());
        }

        return received.ToString();
    }

    private static Metadata Headers(string route, string token) => new() { { RbsHeaders.AgentRoute, route }, { "authorization", "Bearer " + token } };

    private void Log(string line) => TestLog.Write(output, line);
}
