using System.Net;
using System.Net.Sockets;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Time.Testing;
using Rbs.Shared.Tokens;
using Rbs.V1;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Gateway;

/// <summary>
/// Issue 10 defects 1 and 3 on a fake clock: real Kestrel gateway, real tunnel listener (stand-in agent service), real
/// sockets; the hours that join tokens live and lapse pass on a <see cref="FakeTimeProvider"/>.
/// </summary>
[Collection(TunnelCollection.Name)]
public sealed class TunnelCredentialTests(ITestOutputHelper output) : IAsyncLifetime
{
    private static readonly TimeSpan s_renewalLifetime = TimeSpan.FromMinutes(30);
    private readonly TunnelTestEnvironment _env = new(output);
    private readonly FakeTimeProvider _clock = new(DateTimeOffset.UtcNow);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _env.StopAllAsync();

    private RbsTokenService Tokens(TimeProvider clock) => new(Convert.FromBase64String(_env.Key), clock);

    [Fact]
    public async Task IdleAgentRenewsItsCredentialsForHoursAndTheNextStreamsRedialSucceeds()
    {
        var gateway = await _env.StartGatewayAsync(timeProvider: _clock);
        // The orchestrator's token lives 10 minutes; the gateway renews for 30 (the defaults).
        var agent = await _env.StartAgentAsync("agent-idle", gateway.AgentAddress,
            Tokens(_clock).Mint(RbsTokenKind.Join, "agent-idle", "alice", TimeSpan.FromMinutes(10)), spares: 2, connectTimeoutSeconds: 10, timeProvider: _clock);
        await agent.Status.FirstConnected.WaitAsync(TunnelTestEnvironment.Timeout);
        // (The clock moves a second per poll: a dial that failed under load retries on the agent's clock.)
        await EventuallyAdvancingAsync(() => gateway.Registry.FindOnline("agent-idle")?.IdleCount == 2, "both spares registered");
        var credentials = agent.Status.Credentials!;

        // Four idle hours, in steps just past half the renewed token's lifetime. Each step must bring a rotation: a
        // fresh tunnel dialled with the token the agent holds (still valid), which brings a renewed one.
        for (var step = 1; step <= 8; step++)
        {
            var renewals = credentials.Renewals;
            _clock.Advance((s_renewalLifetime / 2) + TimeSpan.FromSeconds(1));
            await EventuallyAdvancingAsync(
                () => credentials.Renewals > renewals && gateway.Registry.FindOnline("agent-idle")?.IdleCount == 2,
                $"step {step} ({_clock.GetUtcNow():HH:mm}): the idle agent rotated a spare to renew its join token");
            Assert.True(credentials.RenewDue > _clock.GetUtcNow());
        }

        Assert.Equal(0, gateway.Logs.Count(120));
        // The next build: its stream takes a spare, and the agent dials the replacement with the token it holds after
        // four idle hours. That dial must be accepted.
        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));
        var session = Tokens(_clock).Mint(RbsTokenKind.Session, "agent-idle", "alice", TimeSpan.FromMinutes(10));
        var before = gateway.Logs.Count(100);
        for (var i = 0; i < 3; i++)
        {
            var result = await TunnelTestEnvironment.RunBytesAsync(client, TunnelTestEnvironment.Route("agent-idle", session), 70_000, seed: i, exitCode: i)
                .WaitAsync(TunnelTestEnvironment.Timeout);
            Assert.Equal(DeterministicBytes.ExpectedSha256(70_000, i), result.Sha256);
            Assert.Equal(i, result.ExitCode);
        }

        await TestWait.EventuallyAsync(() => (gateway.Logs.Count(100) > before && gateway.Registry.FindOnline("agent-idle")?.IdleCount == 2) || agent.Status.Rejected.IsCompleted, "the replacement spare registered",
            timeout: TunnelTestEnvironment.Timeout);
        Assert.False(agent.Status.Rejected.IsCompleted, "the gateway refused the agent's credentials");
        Assert.Equal(0, gateway.Logs.Count(120));
        Assert.False(agent.Stopping.IsCancellationRequested);
    }

    [Fact]
    public async Task AfterAnOutageLongerThanTheTokenLifetimeTheOrchestratorConfirmsTheLiveAgentAndItIsFoundAgain()
    {
        var agentPort = FreePort();
        var gateway = await _env.StartGatewayAsync(agentListen: $"127.0.0.1:{agentPort}", timeProvider: _clock);
        _env.StandInDirectory!.Live["agent-out"] = "alice";
        var agent = await _env.StartAgentAsync("agent-out", gateway.AgentAddress,
            Tokens(_clock).Mint(RbsTokenKind.Join, "agent-out", "alice", TimeSpan.FromMinutes(10)), spares: 2, connectTimeoutSeconds: 10, timeProvider: _clock);
        await EventuallyAdvancingAsync(() => gateway.IsOnline("agent-out"), "agent registered");

        await gateway.StopAsync().WaitAsync(TunnelTestEnvironment.Timeout);
        await TestWait.EventuallyAsync(() => agent.Status.OpenTunnels == 0, "agent noticed the gateway went away", timeout: TunnelTestEnvironment.Timeout);
        // Three hours of outage: every token the agent holds has expired.
        _clock.Advance(TimeSpan.FromHours(3));

        var restarted = await _env.StartGatewayAsync(agentListen: $"127.0.0.1:{agentPort}", timeProvider: _clock);
        await EventuallyAdvancingAsync(() => restarted.IsOnline("agent-out") || agent.Status.Rejected.IsCompleted, "agent came back to the restarted gateway");
        Assert.False(agent.Status.Rejected.IsCompleted, "the agent's credentials were refused after the outage");
        Assert.True(restarted.Logs.Count(122) >= 1, "the gateway re-admitted the expired token on the orchestrator's word");

        var client = new V1.Agent.AgentClient(_env.Channel(restarted.PublicAddress));
        var session = Tokens(_clock).Mint(RbsTokenKind.Session, "agent-out", "alice", TimeSpan.FromMinutes(10));
        var result = await TunnelTestEnvironment.RunBytesAsync(client, TunnelTestEnvironment.Route("agent-out", session), 50_000, seed: 7)
            .WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal(DeterministicBytes.ExpectedSha256(50_000, 7), result.Sha256);
        // From now on the agent holds fresh tokens: no more questions for its dials.
        var asked = _env.StandInDirectory.Questions;
        agent.Status.AbortAllTunnels();
        await EventuallyAdvancingAsync(() => restarted.Registry.FindOnline("agent-out")?.IdleCount == 2, "agent redialled with its renewed token");
        Assert.Equal(asked, _env.StandInDirectory.Questions);
    }

    [Fact]
    public async Task ExpiredJoinTokenIsRefusedWithoutTheOrchestratorsConfirmationAndRetriedWhenItCannotBeAsked()
    {
        var expired = Tokens(new FakeTimeProvider(DateTimeOffset.UtcNow.AddHours(-1))).Mint(RbsTokenKind.Join, "agent-gone", "alice", TimeSpan.FromMinutes(5));

        // The orchestrator answers "not live": refused, final.
        var gateway = await _env.StartGatewayAsync();
        var refused = await _env.StartAgentAsync("agent-gone", gateway.AgentAddress, expired, spares: 1);
        var reason = await refused.Status.Rejected.WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Contains("401", reason, StringComparison.Ordinal);
        Assert.True(_env.StandInDirectory!.Questions >= 1);
        Assert.False(gateway.IsOnline("agent-gone"));
        await refused.StopAsync();

        // The same token for an agent the orchestrator knows as another user's: refused too.
        _env.StandInDirectory.Live["agent-gone"] = "bob";
        var other = await _env.StartAgentAsync("agent-gone", gateway.AgentAddress, expired, spares: 1);
        Assert.Contains("401", await other.Status.Rejected.WaitAsync(TunnelTestEnvironment.Timeout), StringComparison.Ordinal);
        await other.StopAsync();

        // Nobody to ask: 503, so the agent keeps retrying instead of giving up.
        var orphan = await _env.StartGatewayAsync(orchestrator: "http://127.0.0.1:1");
        var retrying = await _env.StartAgentAsync("agent-gone", orphan.AgentAddress, expired, spares: 1);
        await TestWait.EventuallyAsync(() => orphan.Logs.Count(123) >= 3 || retrying.Status.Rejected.IsCompleted, "three unconfirmed attempts",
            timeout: TunnelTestEnvironment.Timeout);
        Assert.False(retrying.Status.Rejected.IsCompleted);
        Assert.True(retrying.Logs.Count(300) >= 2, "the agent retried with backoff");
        Assert.False(orphan.IsOnline("agent-gone"));
    }

    [Fact]
    public async Task ARefusedRedialNeverCutsRunningCommandsAndTheAgentStopsOnceTheyEnd()
    {
        // The gateway's clock runs ahead of the agent's (which never reaches a renewal), so the agent's next dial
        // presents an expired token for an agent the orchestrator does not know: a final refusal.
        var gateway = await _env.StartGatewayAsync(timeProvider: _clock);
        var agent = await _env.StartAgentAsync("agent-busy", gateway.AgentAddress,
            Tokens(_clock).Mint(RbsTokenKind.Join, "agent-busy", "alice", TimeSpan.FromMinutes(10)), spares: 1, settings: new Dictionary<string, string?>
            {
                // One stream per tunnel: every new stream takes a spare, so the agent must dial again.
                ["Agent:Tunnel:MaxStreamsPerTunnel"] = "1",
                ["Agent:Tunnel:MaxExtraSpares"] = "0",
            });
        await gateway.WaitRegisteredAsync("agent-busy");
        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));

        using var first = await OpenEchoAsync(client, "agent-busy", "one");
        await TestWait.EventuallyAsync(() => gateway.Registry.FindOnline("agent-busy")?.IdleCount == 1, "replacement spare registered", timeout: TunnelTestEnvironment.Timeout);

        _clock.Advance(TimeSpan.FromHours(2));
        using var second = await OpenEchoAsync(client, "agent-busy", "two");
        var reason = await agent.Status.Rejected.WaitAsync(TunnelTestEnvironment.Timeout);
        output.WriteLine("agent: " + reason);
        Assert.Contains("401", reason, StringComparison.Ordinal);

        // Both commands keep running and streaming after the refusal.
        Assert.False(agent.Stopping.IsCancellationRequested, "the agent stopped while commands were running");
        Assert.Equal("one-more", await EchoAsync(first, "one-more"));
        Assert.Equal("two-more", await EchoAsync(second, "two-more"));
        Assert.False(agent.Stopping.IsCancellationRequested, "the agent stopped while commands were running");
        // Logged by the refusal's handler, which runs after Rejected completes (the test may get here first).
        await TestWait.EventuallyAsync(() => agent.Logs.Count(312) == 1, "the refusal logged with requests in flight", timeout: TunnelTestEnvironment.Timeout);

        Assert.Equal(0, await FinishAsync(first));
        Assert.False(agent.Stopping.IsCancellationRequested, "the agent stopped while a command was running");
        Assert.Equal(0, await FinishAsync(second));

        // Idle now: it stops, and says why.
        await TestWait.EventuallyAsync(() => agent.Stopping.IsCancellationRequested, "the refused agent stopped once idle", timeout: TunnelTestEnvironment.Timeout);
        Assert.Equal(1, agent.Logs.Count(313));
    }

    [Fact]
    public async Task StreamForAReRegisteringAgentWaitsForItWhileOneForAnAgentTheOrchestratorDoesNotKnowFailsAtOnce()
    {
        var gateway = await _env.StartGatewayAsync();
        _env.StandInDirectory!.Live["agent-late"] = "alice";
        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));

        // As after a gateway restart: the client holds a valid session token, the agent has not re-registered yet.
        var pending = client.GetStatusAsync(new GetStatusRequest(), TunnelTestEnvironment.Route("agent-late", _env.SessionToken("agent-late"))).ResponseAsync;
        await TestWait.EventuallyAsync(() => gateway.Logs.Count(133) == 1 || pending.IsCompleted, "the stream waits for the agent", timeout: TunnelTestEnvironment.Timeout);
        Assert.False(pending.IsCompleted, $"the stream did not wait: {(pending.IsFaulted ? pending.Exception!.GetBaseException().Message : "")}");
        await _env.StartAgentAsync("agent-late", gateway.AgentAddress, _env.JoinToken("agent-late"), spares: 1);
        var status = await pending.WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal("agent-late", status.AgentId);

        var ghost = await Assert.ThrowsAsync<RpcException>(() =>
            client.GetStatusAsync(new GetStatusRequest(), TunnelTestEnvironment.Route("agent-ghost", _env.SessionToken("agent-ghost"))).ResponseAsync.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(StatusCode.Unavailable, ghost.StatusCode);
        Assert.Contains("the orchestrator does not know it as live", ghost.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(1, gateway.Logs.Count(133));
    }

    /// <summary>Polls <paramref name="condition"/>, moving the fake clock on by a second each time (the agent's reconnect backoff runs on it).</summary>
    private async Task EventuallyAdvancingAsync(Func<bool> condition, string what)
    {
        for (var i = 0; i < 600 && !condition(); i++)
        {
            _clock.Advance(TimeSpan.FromSeconds(1));
            await Task.Delay(50);
        }

        Assert.True(condition(), $"timed out waiting for: {what}");
    }

    private async Task<AsyncDuplexStreamingCall<ClientFrame, ServerFrame>> OpenEchoAsync(V1.Agent.AgentClient client, string agentId, string text)
    {
        var session = Tokens(_clock).Mint(RbsTokenKind.Session, agentId, "alice", TimeSpan.FromMinutes(10));
        var call = client.ExecuteCommand(TunnelTestEnvironment.Route(agentId, session));
        await call.RequestStream.WriteAsync(TunnelTestEnvironment.Start("echo")).WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.True(await call.ResponseStream.MoveNext().WaitAsync(TunnelTestEnvironment.Timeout));
        Assert.Equal(ServerFrame.FrameOneofCase.Started, call.ResponseStream.Current.FrameCase);
        Assert.Equal(text, await EchoAsync(call, text));
        return call;
    }

    private static async Task<string> EchoAsync(AsyncDuplexStreamingCall<ClientFrame, ServerFrame> call, string text)
    {
        await call.RequestStream.WriteAsync(new ClientFrame { Stdin = ByteString.CopyFromUtf8(text) }).WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.True(await call.ResponseStream.MoveNext().WaitAsync(TunnelTestEnvironment.Timeout));
        return call.ResponseStream.Current.Stdout.ToStringUtf8();
    }

    private static async Task<int?> FinishAsync(AsyncDuplexStreamingCall<ClientFrame, ServerFrame> call)
    {
        await call.RequestStream.WriteAsync(new ClientFrame { StdinEof = new StdinEof() }).WaitAsync(TunnelTestEnvironment.Timeout);
        await call.RequestStream.CompleteAsync();
        int? exit = null;
        while (await call.ResponseStream.MoveNext().WaitAsync(TunnelTestEnvironment.Timeout))
        {
            if (call.ResponseStream.Current.FrameCase == ServerFrame.FrameOneofCase.Exit)
            {
                exit = call.ResponseStream.Current.Exit.Code;
            }
        }

        return exit;
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
