using System.Net;
using System.Net.Sockets;
using Grpc.Core;
using Rbs.Shared.Tokens;
using Rbs.V1;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Gateway;

/// <summary>
/// Tokens through the gateway's JwtBearer handler and policies: a key rotation end to end (a real agent, real
/// streams, the gateway restarted at each step as an operator would), kinds that never pass for each other, and
/// non-canonical spellings refused on the wire.
/// </summary>
[Collection(TunnelCollection.Name)]
public sealed class TokenRotationTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly TunnelTestEnvironment _env = new(output);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _env.StopAllAsync();

    [Fact]
    public async Task OldKeyTokensStayValidWhileTheKeyIsAcceptedAndAreRefusedOnceItIsRemoved()
    {
        var oldKey = _env.Key;
        var newKey = RbsTokenKeyRing.GenerateKey();
        var oldTokens = new RbsTokenService(Convert.FromBase64String(oldKey), TimeProvider.System);
        var newTokens = new RbsTokenService(Convert.FromBase64String(newKey), TimeProvider.System);
        var oldSession = oldTokens.Mint(RbsTokenKind.Session, "agent-rot", "alice", TimeSpan.FromMinutes(10));
        var newSession = newTokens.Mint(RbsTokenKind.Session, "agent-rot", "alice", TimeSpan.FromMinutes(10));
        var agentPort = FreePort();

        // Step 1: the old key signs, the new one is accepted. The agent joins with an old-key token.
        var gateway = await StartAsync(agentPort, current: oldKey, accepted: newKey);
        var agent = await _env.StartAgentAsync("agent-rot", gateway.AgentAddress, oldTokens.Mint(RbsTokenKind.Join, "agent-rot", "alice", TimeSpan.FromMinutes(10)), spares: 1);
        await TestWait.EventuallyAsync(() => gateway.IsOnline("agent-rot"), "agent registered (step 1)", timeout: TunnelTestEnvironment.Timeout);
        await AssertReachesAsync(gateway, "agent-rot", oldSession);
        await AssertReachesAsync(gateway, "agent-rot", newSession);

        // Step 2: the new key signs, the old one is still accepted: the agent redials with the join token the step-1
        // gateway renewed (old key) and is admitted; old and new session tokens both work.
        await gateway.StopAsync().WaitAsync(TunnelTestEnvironment.Timeout);
        gateway = await StartAsync(agentPort, current: newKey, accepted: oldKey);
        await TestWait.EventuallyAsync(() => gateway.IsOnline("agent-rot"), "agent re-registered (step 2)", timeout: TunnelTestEnvironment.Timeout);
        await AssertReachesAsync(gateway, "agent-rot", oldSession);
        await AssertReachesAsync(gateway, "agent-rot", newSession);

        // Step 3: the old key is removed. Its session token is refused; the agent holds a new-key join token by now
        // (renewed by the step-2 gateway) and re-registers.
        await gateway.StopAsync().WaitAsync(TunnelTestEnvironment.Timeout);
        gateway = await StartAsync(agentPort, current: newKey, accepted: null);
        await TestWait.EventuallyAsync(() => gateway.IsOnline("agent-rot"), "agent re-registered (step 3)", timeout: TunnelTestEnvironment.Timeout);
        await AssertReachesAsync(gateway, "agent-rot", newSession);
        var refused = await Assert.ThrowsAsync<RpcException>(() => Status(gateway, "agent-rot", oldSession));
        Assert.Equal(StatusCode.Unauthenticated, refused.StatusCode);
        Assert.Contains("signature", refused.Status.Detail, StringComparison.Ordinal);
        Assert.False(agent.Status.Rejected.IsCompleted, "the agent's credentials were refused during the rotation");
    }

    [Fact]
    public async Task JoinAndSessionTokensNeverPassForEachOtherAndNonCanonicalSpellingsAreRefused()
    {
        var gateway = await _env.StartGatewayAsync();
        var agent = await _env.StartAgentAsync("agent-k", gateway.AgentAddress, _env.JoinToken("agent-k"), spares: 1);
        await TestWait.EventuallyAsync(() => gateway.IsOnline("agent-k"), "agent registered", timeout: TunnelTestEnvironment.Timeout);
        var session = _env.SessionToken("agent-k");
        await AssertReachesAsync(gateway, "agent-k", session);

        // A join token on a client stream.
        var asSession = await Assert.ThrowsAsync<RpcException>(() => Status(gateway, "agent-k", _env.JoinToken("agent-k")));
        Assert.Equal(StatusCode.Unauthenticated, asSession.StatusCode);
        Assert.Contains("a join token cannot be used where a session token is required", asSession.Status.Detail, StringComparison.Ordinal);

        // A session token (and an internal one) on the tunnel endpoint: refused before the upgrade, 401.
        using var http = new HttpClient();
        foreach (var (token, kind) in new[] { (session, "session"), (_env.InternalToken(), "internal") })
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, gateway.AgentAddress + "/tunnel/v1/connect");
            request.Headers.Authorization = new("Bearer", token);
            using var response = await http.SendAsync(request);
            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
            Assert.Contains($"a {kind} token cannot be used where a join token is required", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }

        // A session token on the orchestrator's registry.
        var onRegistry = await Assert.ThrowsAsync<RpcException>(() => _env.RegistryClient(gateway.AgentAddress)
            .ListAgentsAsync(new ListAgentsRequest(), _env.InternalHeaders(session)).ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout));
        Assert.Equal(StatusCode.Unauthenticated, onRegistry.StatusCode);
        Assert.Contains("a session token cannot be used where", onRegistry.Status.Detail, StringComparison.Ordinal);

        // The valid session token, spelled differently: each is refused.
        var parts = session.Split('.');
        foreach (var respelled in new[] { session + "=", $"{parts[0]}.{parts[1]}=.{parts[2]}", session.Replace(".", "..", StringComparison.Ordinal), $"{parts[0]}.{parts[1]}.+{parts[2][1..]}" })
        {
            var ex = await Assert.ThrowsAsync<RpcException>(() => Status(gateway, "agent-k", respelled));
            Assert.Equal(StatusCode.Unauthenticated, ex.StatusCode);
            Assert.Contains("malformed", ex.Status.Detail, StringComparison.Ordinal);
        }

        Assert.False(agent.Status.Rejected.IsCompleted);
    }

    private Task<GatewayHost> StartAsync(int agentPort, string current, string? accepted) =>
        _env.StartGatewayAsync(agentListen: $"127.0.0.1:{agentPort}", settings: new Dictionary<string, string?>
        {
            ["Gateway:TokenKey"] = current,
            ["Gateway:AcceptedTokenKeys"] = accepted,
        });

    private async Task AssertReachesAsync(GatewayHost gateway, string agentId, string session) =>
        Assert.Equal(agentId, (await Status(gateway, agentId, session)).AgentId);

    private Task<AgentStatus> Status(GatewayHost gateway, string agentId, string session) =>
        new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress))
            .GetStatusAsync(new GetStatusRequest(), TunnelTestEnvironment.Route(agentId, session)).ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout);

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
