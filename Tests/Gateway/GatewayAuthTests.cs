using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Rbs.Shared.Tokens;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.Gateway;

[Collection(TunnelCollection.Name)]
public sealed class GatewayAuthTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly TunnelTestEnvironment _env = new(output);
    private GatewayHost _gateway = null!;
    private V1.Agent.AgentClient _client = null!;

    public async Task InitializeAsync()
    {
        _gateway = await _env.StartGatewayAsync();
        var alice = await _env.StartAgentAsync("agent-alice", _gateway.AgentAddress, _env.JoinToken("agent-alice", "alice"), spares: 1);
        var bob = await _env.StartAgentAsync("agent-bob", _gateway.AgentAddress, _env.JoinToken("agent-bob", "bob"), spares: 1);
        await Task.WhenAll(alice.Status.FirstConnected, bob.Status.FirstConnected).WaitAsync(TunnelTestEnvironment.Timeout);
        await TestWait.EventuallyAsync(() => _gateway.IsOnline("agent-alice") && _gateway.IsOnline("agent-bob"), "agents registered", timeout: TimeSpan.FromSeconds(10));
        _client = new V1.Agent.AgentClient(_env.Channel(_gateway.PublicAddress));
    }

    public Task DisposeAsync() => _env.StopAllAsync();

    private async Task<RpcException> StatusAsync(Metadata metadata)
    {
        return await Assert.ThrowsAsync<RpcException>(() =>
            _client.GetStatusAsync(new GetStatusRequest(), metadata).ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout));
    }

    [Fact]
    public async Task OwnerWithAValidSessionTokenReachesTheAgent()
    {
        var status = await _client.GetStatusAsync(new GetStatusRequest(), TunnelTestEnvironment.Route("agent-alice", _env.SessionToken("agent-alice", "alice")))
            .ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal("agent-alice", status.AgentId);
    }

    [Fact]
    public async Task MissingSessionTokenIsUnauthenticated()
    {
        var ex = await StatusAsync(TunnelTestEnvironment.Route("agent-alice", sessionToken: null));
        Assert.Equal(StatusCode.Unauthenticated, ex.StatusCode);
        Assert.Contains("no token was presented", ex.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task ForgedExpiredOrJoinTokensAreUnauthenticated()
    {
        var forged = new RbsTokenService(Convert.FromBase64String(RbsTokenKeyRing.GenerateKey()), TimeProvider.System)
            .Mint(RbsTokenKind.Session, "agent-alice", "alice", TimeSpan.FromMinutes(5));
        Assert.Equal(StatusCode.Unauthenticated, (await StatusAsync(TunnelTestEnvironment.Route("agent-alice", forged))).StatusCode);

        var past = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow.AddHours(-1));
        var expired = new RbsTokenService(Convert.FromBase64String(_env.Key), past)
            .Mint(RbsTokenKind.Session, "agent-alice", "alice", TimeSpan.FromMinutes(5));
        var ex = await StatusAsync(TunnelTestEnvironment.Route("agent-alice", expired));
        Assert.Equal(StatusCode.Unauthenticated, ex.StatusCode);
        Assert.Contains("expired", ex.Status.Detail, StringComparison.Ordinal);

        // An agent's join token is not a client credential.
        Assert.Equal(StatusCode.Unauthenticated, (await StatusAsync(TunnelTestEnvironment.Route("agent-alice", _env.JoinToken("agent-alice", "alice")))).StatusCode);
    }

    [Fact]
    public async Task TokenForAgentAUsedWithRouteBIsPermissionDenied()
    {
        var ex = await StatusAsync(TunnelTestEnvironment.Route("agent-alice", _env.SessionToken("agent-bob", "bob")));
        Assert.Equal(StatusCode.PermissionDenied, ex.StatusCode);
    }

    [Fact]
    public async Task UserBCannotReachUserAsAgentEvenWithATokenNamingIt()
    {
        // A token naming alice's agent but minted for bob (e.g. a buggy or compromised minting path) is still refused:
        // the agent's owner comes from its join token.
        var ex = await StatusAsync(TunnelTestEnvironment.Route("agent-alice", _env.SessionToken("agent-alice", "bob")));
        Assert.Equal(StatusCode.PermissionDenied, ex.StatusCode);

        using var call = _client.ExecuteCommand(TunnelTestEnvironment.Route("agent-alice", _env.SessionToken("agent-bob", "bob")));
        try
        {
            await call.RequestStream.WriteAsync(TunnelTestEnvironment.Start("bytes", "10", "1"));
        }
        catch (RpcException)
        {
            // The gateway may answer (trailers-only) and reset the request side before this write lands; the
            // call's real status is in the response, which is what a client (jbazel does) must read.
        }

        var streamEx = await Assert.ThrowsAsync<RpcException>(
            () => call.ResponseStream.MoveNext().WaitAsync(TunnelTestEnvironment.Timeout));
        Assert.Equal(StatusCode.PermissionDenied, streamEx.StatusCode);
    }

    [Fact]
    public async Task OfflineAgentIsUnavailableWithAClearMessage()
    {
        var ex = await StatusAsync(TunnelTestEnvironment.Route("agent-ghost", _env.SessionToken("agent-ghost")));
        Assert.Equal(StatusCode.Unavailable, ex.StatusCode);
        Assert.Contains("agent agent-ghost is not connected to the gateway", ex.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task MissingRouteIsInvalidArgument()
    {
        var metadata = new Metadata { { "authorization", "Bearer " + _env.SessionToken("agent-alice") } };
        Assert.Equal(StatusCode.InvalidArgument, (await StatusAsync(metadata)).StatusCode);
    }

    [Fact]
    public async Task TheRegistryIsServedOnTheAgentEndpointOnlyNeverOnThePublicOne()
    {
        // Over HTTP/2 gRPC as a client would try it, and in other spellings: the public endpoint never routes it.
        var onPublic = await Assert.ThrowsAsync<RpcException>(() => new GatewayRegistry.GatewayRegistryClient(_env.Channel(_gateway.PublicAddress))
            .GetAgentAsync(new GetAgentRequest { AgentId = "agent-alice" }, _env.InternalHeaders()).ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout));
        Assert.Equal(StatusCode.Unimplemented, onPublic.StatusCode);
        Assert.Contains("404", onPublic.Status.Detail, StringComparison.Ordinal);
        using var http = new HttpClient(new SocketsHttpHandler());
        foreach (var path in new[] { "/rbs.v1.GatewayRegistry/GetAgent", "/RBS.V1.GATEWAYREGISTRY/GetAgent", "/rbs.v1.GatewayRegistry/ListAgents", "/internal/v1/agents" })
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, _gateway.PublicAddress + path)
            {
                Version = System.Net.HttpVersion.Version20,
                VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            };
            request.Headers.Authorization = new("Bearer", _env.InternalToken());
            using var response = await http.SendAsync(request);
            Assert.True(response.StatusCode == System.Net.HttpStatusCode.NotFound, $"{path} on the public endpoint: {response.StatusCode}");
        }

        var registry = _env.RegistryClient(_gateway.AgentAddress);
        var alice = await registry.GetAgentAsync(new GetAgentRequest { AgentId = "agent-alice" }, _env.InternalHeaders()).ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.True(alice.Online);
        Assert.Equal("alice", alice.UserId);
        Assert.True(alice.LiveTunnels >= 1);
        var all = await registry.ListAgentsAsync(new ListAgentsRequest(), _env.InternalHeaders()).ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal(["agent-alice", "agent-bob"], all.Agents.Select(a => a.AgentId).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task SecondIdentityCannotRegisterAnOnlineAgentId()
    {
        var hijacker = await _env.StartAgentAsync("agent-alice", _gateway.AgentAddress, _env.JoinToken("agent-alice", "mallory"), spares: 1);
        var reason = await hijacker.Status.Rejected.WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Contains("403", reason, StringComparison.Ordinal);
        Assert.Equal("alice", _gateway.Registry.FindOnline("agent-alice")!.UserId);
    }
}

[Collection(TunnelCollection.Name)]
public sealed class GatewayRegistrationAndProxyTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly TunnelTestEnvironment _env = new(output);
    private WebApplication? _orchestrator;

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        await _env.StopAllAsync();
        if (_orchestrator is not null)
        {
            await _orchestrator.StopAsync();
            await _orchestrator.DisposeAsync();
        }
    }

    [Fact]
    public async Task RegistryLongPollsUntilTheAgentRegistersAndAnswersOfflineWhenTheWaitEnds()
    {
        var gateway = await _env.StartGatewayAsync();
        var registry = _env.RegistryClient(gateway.AgentAddress);

        // Agents can reach the agent endpoint too (and run user code): the registry wants the orchestrator's token.
        var anonymous = await Assert.ThrowsAsync<RpcException>(() =>
            registry.ListAgentsAsync(new ListAgentsRequest()).ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout));
        Assert.Equal(StatusCode.Unauthenticated, anonymous.StatusCode);
        Assert.Contains("internal token rejected: no token was presented", anonymous.Status.Detail, StringComparison.Ordinal);
        var withSession = await Assert.ThrowsAsync<RpcException>(() => registry.GetAgentAsync(
            new GetAgentRequest { AgentId = "agent-w" }, _env.InternalHeaders(_env.SessionToken("agent-w"))).ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout));
        Assert.Equal(StatusCode.Unauthenticated, withSession.StatusCode);
        var noId = await Assert.ThrowsAsync<RpcException>(() => registry.GetAgentAsync(
            new GetAgentRequest(), _env.InternalHeaders()).ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout));
        Assert.Equal(StatusCode.InvalidArgument, noId.StatusCode);

        // Not online: an answer (online = false), not an error; right away without a wait, at its end with one.
        var unknown = await registry.GetAgentAsync(new GetAgentRequest { AgentId = "agent-w" }, _env.InternalHeaders()).ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.False(unknown.Online);
        Assert.Equal("agent-w", unknown.AgentId);
        var waited = System.Diagnostics.Stopwatch.StartNew();
        var timedOut = await registry.GetAgentAsync(new GetAgentRequest { AgentId = "agent-w", Wait = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(TimeSpan.FromMilliseconds(500)) },
            _env.InternalHeaders()).ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.False(timedOut.Online);
        Assert.True(waited.Elapsed >= TimeSpan.FromMilliseconds(450), $"answered after {waited.Elapsed} of a 500 ms wait");

        // The orchestrator's view: ask, then start the agent; the answer arrives when it registers, long before the 100 s
        // wait ends (the test's 30 s bound).
        var waiting = registry.GetAgentAsync(new GetAgentRequest { AgentId = "agent-w", Wait = Google.Protobuf.WellKnownTypes.Duration.FromTimeSpan(TimeSpan.FromSeconds(100)) },
            _env.InternalHeaders()).ResponseAsync;
        Assert.False(waiting.IsCompleted, "answered before the agent registered");
        var started = System.Diagnostics.Stopwatch.StartNew();
        await _env.StartAgentAsync("agent-w", gateway.AgentAddress, _env.JoinToken("agent-w"));
        var registered = await waiting.WaitAsync(TunnelTestEnvironment.Timeout);
        output.WriteLine($"{registered} after {started.Elapsed}");
        Assert.True(registered.Online);
        Assert.Equal("agent-w", registered.AgentId);
        Assert.Equal("alice", registered.UserId);
    }

    [Fact]
    public async Task OrchestratorCallsAreProxiedThroughThePublicEndpoint()
    {
        _orchestrator = await StartStandInOrchestratorAsync();
        var orchestratorAddress = _orchestrator.Urls.First();
        var gateway = await _env.StartGatewayAsync(orchestrator: orchestratorAddress);
        var client = new V1.Orchestrator.OrchestratorClient(_env.Channel(gateway.PublicAddress));

        var response = await client.GetServerAsync(new GetServerRequest { RepoHash = "abc123", SourcePath = "/src" }, new Metadata { { "authorization", "Bearer api-key-1" } })
            .ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout);

        Assert.Equal("agent-for-abc123", response.AgentId);
        // Client metadata reaches the orchestrator unchanged (it authenticates the API key itself).
        Assert.Equal("Bearer api-key-1", response.BackendRef);
    }

    [Fact]
    public async Task UnreachableOrchestratorIsUnavailableWithItsAddress()
    {
        var gateway = await _env.StartGatewayAsync(orchestrator: "http://127.0.0.1:1");
        var client = new V1.Orchestrator.OrchestratorClient(_env.Channel(gateway.PublicAddress));

        var ex = await Assert.ThrowsAsync<RpcException>(() => client.GetServerAsync(new GetServerRequest { RepoHash = "abc" }).ResponseAsync.WaitAsync(TunnelTestEnvironment.Timeout));

        Assert.Equal(StatusCode.Unavailable, ex.StatusCode);
        Assert.Contains("cannot reach the orchestrator at http://127.0.0.1:1", ex.Status.Detail, StringComparison.Ordinal);
    }

    private async Task<WebApplication> StartStandInOrchestratorAsync()
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { EnvironmentName = "Production" });
        builder.Logging.ClearProviders().AddProvider(new TestOutputLoggerProvider(output, "orchestrator"));
        builder.WebHost.ConfigureKestrel(k => k.Listen(System.Net.IPAddress.Loopback, 0, l => l.Protocols = HttpProtocols.Http2));
        builder.Services.AddGrpc();
        var app = builder.Build();
        app.MapGrpcService<StandInOrchestrator>();
        await app.StartAsync().WaitAsync(TunnelTestEnvironment.Timeout);
        return app;
    }

    private sealed class StandInOrchestrator : V1.Orchestrator.OrchestratorBase
    {
        public override Task<GetServerResponse> GetServer(GetServerRequest request, ServerCallContext context) =>
            Task.FromResult(new GetServerResponse
            {
                AgentId = "agent-for-" + request.RepoHash,
                BackendRef = context.RequestHeaders.GetValue("authorization") ?? "",
                ConnectMode = ConnectMode.Tunnel,
            });
    }
}

[Collection(TunnelCollection.Name)]
public sealed class AgentRegistrationClientTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly TunnelTestEnvironment _env = new(output);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _env.StopAllAsync();

    [Fact]
    public async Task OrchestratorSideClientWaitsForRegistrationAndDetectsAKeyMismatch()
    {
        var gateway = await _env.StartGatewayAsync();
        using var registration = new Rbs.Orchestrator.Gateway.AgentRegistrationClient(new Uri(gateway.AgentAddress), _env.InternalToken, new SocketsHttpHandler());

        Assert.False(await registration.WaitUntilRegisteredAsync("agent-q", TimeSpan.FromMilliseconds(300), CancellationToken.None).WaitAsync(TunnelTestEnvironment.Timeout));

        var waiting = registration.WaitUntilRegisteredAsync("agent-q", TimeSpan.FromSeconds(20), CancellationToken.None);
        await _env.StartAgentAsync("agent-q", gateway.AgentAddress, _env.JoinToken("agent-q"), spares: 1);
        Assert.True(await waiting.WaitAsync(TunnelTestEnvironment.Timeout));

        // The caller's cancellation ends a long-poll as a cancellation, not as a gateway failure.
        using (var cancel = new CancellationTokenSource(TimeSpan.FromMilliseconds(200)))
        {
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
                registration.WaitUntilRegisteredAsync("agent-never", TimeSpan.FromSeconds(20), cancel.Token).WaitAsync(TunnelTestEnvironment.Timeout));
        }

        var otherKey = new RbsTokenService(Convert.FromBase64String(RbsTokenKeyRing.GenerateKey()), TimeProvider.System);
        using var mismatched = new Rbs.Orchestrator.Gateway.AgentRegistrationClient(new Uri(gateway.AgentAddress),
            () => otherKey.Mint(RbsTokenKind.Internal, "orchestrator", "orchestrator", TimeSpan.FromMinutes(1)), new SocketsHttpHandler());
        var ex = await Assert.ThrowsAsync<InvalidOperationException>(() => mismatched.IsRegisteredAsync("agent-q", TimeSpan.Zero, CancellationToken.None));
        output.WriteLine(ex.Message);
        Assert.Contains("rejected the orchestrator's internal token: the two must share the same token key", ex.Message, StringComparison.Ordinal);
        Assert.Contains("signature", ex.Message, StringComparison.Ordinal);
    }
}
