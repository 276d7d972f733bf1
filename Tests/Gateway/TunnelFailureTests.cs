using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Grpc.Core;
using Rbs.Shared.Tokens;
using Rbs.V1;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Gateway;

[Collection(TunnelCollection.Name)]
public sealed class TunnelFailureTests(ITestOutputHelper output) : IAsyncLifetime
{
    // AgentTunnelRegistry's log events: a tunnel added, a tunnel removed.
    private const int GatewayTunnelAdded = 100;
    private const int GatewayTunnelRemoved = 101;

    private readonly TunnelTestEnvironment _env = new(output);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _env.StopAllAsync();

    [Fact]
    public async Task KillingTheTunnelMidStreamFailsTheClientFastAndTheAgentReconnects()
    {
        var gateway = await _env.StartGatewayAsync();
        var agent = await _env.StartAgentAsync("agent-k", gateway.AgentAddress, _env.JoinToken("agent-k"));
        await gateway.WaitRegisteredAsync("agent-k");
        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));
        var metadata = TunnelTestEnvironment.Route("agent-k", _env.SessionToken("agent-k"));

        using var call = client.ExecuteCommand(metadata);
        await call.RequestStream.WriteAsync(TunnelTestEnvironment.Start("forever"));
        for (var i = 0; i < 5; i++)
        {
            Assert.True(await call.ResponseStream.MoveNext().WaitAsync(TunnelTestEnvironment.Timeout));
        }

        // Cut every tunnel as a network failure would.
        output.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} cutting all tunnels of agent-k");
        var addedBeforeCut = gateway.Logs.Count(GatewayTunnelAdded);
        var stopwatch = Stopwatch.StartNew();
        agent.Status.AbortAllTunnels();
        var ex = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            while (await call.ResponseStream.MoveNext().WaitAsync(TimeSpan.FromSeconds(2)))
            {
            }
        });
        stopwatch.Stop();
        output.WriteLine($"client saw {ex.StatusCode} '{ex.Status.Detail}' {stopwatch.ElapsedMilliseconds} ms after the cut");
        // A transient, clearly worded status (jbazel maps Unavailable to exit 38), not a bare stream reset.
        Assert.Equal(StatusCode.Unavailable, ex.StatusCode);
        Assert.Contains("tunnel to agent agent-k was lost", ex.Status.Detail, StringComparison.Ordinal);
        Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(2), $"the client waited {stopwatch.ElapsedMilliseconds} ms");

        // The agent redials on its own and serves the next stream. Online alone is not enough: the agent redials
        // within milliseconds, so the gateway can still hold a cut tunnel it has not yet noticed (online), then drop
        // it before it adds the new one (offline for a moment, and the stand-in directory fails a stream at once).
        // So wait until every tunnel of before the cut is gone and a new one is in.
        await TestWait.EventuallyAsync(
            () => gateway.Logs.Count(GatewayTunnelRemoved) >= addedBeforeCut && gateway.IsOnline("agent-k"),
            "the gateway dropped the cut tunnels and the agent re-registered", timeout: TimeSpan.FromSeconds(10));
        var result = await TunnelTestEnvironment.RunBytesAsync(client, metadata, 100_000, seed: 5).WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal(DeterministicBytes.ExpectedSha256(100_000, 5), result.Sha256);
    }

    [Fact]
    public async Task AgentReRegistersAfterAGatewayRestart()
    {
        var agentPort = FreePort();
        var gateway = await _env.StartGatewayAsync(agentListen: $"127.0.0.1:{agentPort}");
        var agent = await _env.StartAgentAsync("agent-r", gateway.AgentAddress, _env.JoinToken("agent-r"));
        await agent.Status.FirstConnected.WaitAsync(TunnelTestEnvironment.Timeout);
        await TestWait.EventuallyAsync(() => gateway.IsOnline("agent-r"), "agent registered", timeout: TimeSpan.FromSeconds(10));

        await gateway.StopAsync().WaitAsync(TunnelTestEnvironment.Timeout);
        await TestWait.EventuallyAsync(() => agent.Status.OpenTunnels == 0, "agent noticed the gateway went away", timeout: TimeSpan.FromSeconds(10));
        // The agent fails a few dials against the closed port (backoff) before the gateway returns.
        await TestWait.EventuallyAsync(() => agent.Logs.Count(300) >= 2, "the agent failed two dials against the closed port");

        var restarted = await _env.StartGatewayAsync(agentListen: $"127.0.0.1:{agentPort}");
        await TestWait.EventuallyAsync(() => restarted.IsOnline("agent-r"), "agent re-registered at the new gateway", timeout: TimeSpan.FromSeconds(15));
        var client = new V1.Agent.AgentClient(_env.Channel(restarted.PublicAddress));
        var result = await TunnelTestEnvironment.RunBytesAsync(client, TunnelTestEnvironment.Route("agent-r", _env.SessionToken("agent-r")), 200_000, seed: 3, exitCode: 1)
            .WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal(DeterministicBytes.ExpectedSha256(200_000, 3), result.Sha256);
        Assert.Equal(1, result.ExitCode);
    }

    [Fact]
    public async Task AgentWithAForgedJoinTokenIsRefusedOnceAndStops()
    {
        var gateway = await _env.StartGatewayAsync();
        var forged = new RbsTokenService(Convert.FromBase64String(RbsTokenKeyRing.GenerateKey()), TimeProvider.System)
            .Mint(RbsTokenKind.Join, "agent-f", "mallory", TimeSpan.FromMinutes(5));
        var agent = await _env.StartAgentAsync("agent-f", gateway.AgentAddress, forged, spares: 2);

        var reason = await agent.Status.Rejected.WaitAsync(TunnelTestEnvironment.Timeout);
        output.WriteLine("agent: " + reason);
        Assert.Contains("401", reason, StringComparison.Ordinal);
        Assert.True(agent.Stopping.IsCancellationRequested || await WaitCancelledAsync(agent.Stopping), "the agent should stop after a final rejection");
        Assert.Equal(1, agent.Logs.Count(303));

        // No retry storm: every dial loop ended on the refusal, each after one try. A loop's dial has its answer
        // (the gateway logs the refusal before it answers) by the time the loop ends, so the count is final.
        await agent.Status.DialLoopsEnded.WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.InRange(gateway.Logs.Count(120), 1, 2);
        Assert.False(gateway.IsOnline("agent-f"));
    }

    [Fact]
    public async Task AgentWithAnExpiredJoinTokenIsRefused()
    {
        var gateway = await _env.StartGatewayAsync();
        var past = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow.AddHours(-1));
        var expired = new RbsTokenService(Convert.FromBase64String(_env.Key), past)
            .Mint(RbsTokenKind.Join, "agent-e", "alice", TimeSpan.FromMinutes(5));
        var agent = await _env.StartAgentAsync("agent-e", gateway.AgentAddress, expired, spares: 1);

        var reason = await agent.Status.Rejected.WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Contains("401", reason, StringComparison.Ordinal);
        Assert.False(gateway.IsOnline("agent-e"));
    }

    [Fact]
    public async Task TunnelConnectWithoutAValidJoinTokenGets401BeforeTheUpgrade()
    {
        var gateway = await _env.StartGatewayAsync();
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };

        var noToken = await http.GetAsync(gateway.AgentAddress + "/tunnel/v1/connect");
        Assert.Equal(HttpStatusCode.Unauthorized, noToken.StatusCode);

        // A session token is not a join token.
        using var sessionRequest = new HttpRequestMessage(HttpMethod.Get, gateway.AgentAddress + "/tunnel/v1/connect");
        sessionRequest.Headers.Authorization = new("Bearer", _env.SessionToken("agent-x"));
        var session = await http.SendAsync(sessionRequest);
        Assert.Equal(HttpStatusCode.Unauthorized, session.StatusCode);
        Assert.Contains("session token cannot be used", await session.Content.ReadAsStringAsync(), StringComparison.Ordinal);

        using var ws = new System.Net.WebSockets.ClientWebSocket();
        ws.Options.CollectHttpResponseDetails = true;
        await Assert.ThrowsAsync<System.Net.WebSockets.WebSocketException>(() =>
            ws.ConnectAsync(new Uri(gateway.AgentAddress.Replace("http://", "ws://", StringComparison.Ordinal) + "/tunnel/v1/connect"), CancellationToken.None));
        Assert.Equal(HttpStatusCode.Unauthorized, ws.HttpStatusCode);

        // A valid join token without a WebSocket upgrade is a client error, not a tunnel.
        using var plain = new HttpRequestMessage(HttpMethod.Get, gateway.AgentAddress + "/tunnel/v1/connect");
        plain.Headers.Authorization = new("Bearer", _env.JoinToken("agent-x"));
        Assert.Equal(HttpStatusCode.BadRequest, (await http.SendAsync(plain)).StatusCode);
    }

    private static async Task<bool> WaitCancelledAsync(CancellationToken token)
    {
        try
        {
            await Task.Delay(TimeSpan.FromSeconds(10), token);
            return false;
        }
        catch (OperationCanceledException)
        {
            return true;
        }
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}

[Collection(TunnelCollection.Name)]
public sealed class TunnelKeepAliveTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly TunnelTestEnvironment _env = new(output);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _env.StopAllAsync();

    [Fact]
    public async Task SilentlyDeadTunnelsAreEvictedOnBothSidesAndTheAgentComesBack()
    {
        var gateway = await _env.StartGatewayAsync(keepAliveSeconds: 1);
        var agentUri = new Uri(gateway.AgentAddress);
        await using var relay = new FreezableTcpRelay(new IPEndPoint(IPAddress.Loopback, agentUri.Port));
        // No relay tunnels: they would go to the gateway's relay port around the freezable proxy (and a silently dead
        // parked one is found by TCP keepalive, not by the tunnels' pings this test is about).
        var agent = await _env.StartAgentAsync("agent-z", relay.Address, _env.JoinToken("agent-z"), spares: 2, keepAliveSeconds: 1,
            settings: new Dictionary<string, string?> { ["Agent:Tunnel:RelaySpareConnections"] = "0" });
        await TestWait.EventuallyAsync(() => gateway.IsOnline("agent-z"), "agent registered through the relay", timeout: TimeSpan.FromSeconds(10));
        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));
        var metadata = TunnelTestEnvironment.Route("agent-z", _env.SessionToken("agent-z"));
        using var call = client.ExecuteCommand(metadata);
        await call.RequestStream.WriteAsync(TunnelTestEnvironment.Start("forever"));
        Assert.True(await call.ResponseStream.MoveNext().WaitAsync(TunnelTestEnvironment.Timeout));

        // The link goes silent: no FIN, no RST. Only pings can tell.
        output.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} freezing the link");
        relay.Freeze();
        var ex = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(15));
            while (await call.ResponseStream.MoveNext(cts.Token))
            {
            }
        });
        output.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} in-flight stream ended: {ex.StatusCode} {ex.Status.Detail}");
        Assert.Equal(StatusCode.Unavailable, ex.StatusCode);
        await TestWait.EventuallyAsync(() => !gateway.IsOnline("agent-z"), "gateway evicted the dead tunnels", timeout: TimeSpan.FromSeconds(15));
        await TestWait.EventuallyAsync(() => agent.Status.OpenTunnels == 0, "agent dropped its dead tunnels", timeout: TimeSpan.FromSeconds(15));

        // A client arriving now gets a clear Unavailable instead of a request stuck on a dead tunnel.
        var offline = await Assert.ThrowsAsync<RpcException>(() => client.GetStatusAsync(new GetStatusRequest(), metadata).ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout));
        Assert.Equal(StatusCode.Unavailable, offline.StatusCode);

        relay.Thaw();
        await TestWait.EventuallyAsync(() => gateway.IsOnline("agent-z"), "agent re-registered after the link recovered", timeout: TimeSpan.FromSeconds(15));
        var result = await TunnelTestEnvironment.RunBytesAsync(client, metadata, 50_000, seed: 4).WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal(DeterministicBytes.ExpectedSha256(50_000, 4), result.Sha256);
    }
}
