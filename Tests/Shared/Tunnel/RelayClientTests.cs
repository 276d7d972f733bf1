using System.Net;
using System.Net.Sockets;
using System.Text;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.Time.Testing;
using Rbs.JBazel.Remote;
using Rbs.Shared.Tunnel;
using Rbs.Tests.Infrastructure;
using Rbs.Tests.JBazel;
using Rbs.V1;

namespace Rbs.Tests.Shared.Tunnel;

/// <summary>
/// The relay's client side against a fake gateway that speaks the real handshake: relayed bytes arrive whole and in
/// order, and every way a gateway can fail to relay (refusal, close, silence) ends on a plain connection that is
/// remembered for a while, so the calls still reach the agent through the gateway's per-stream forwarding.
/// </summary>
public sealed class RelayClientTests(ITestOutputHelper output)
{
    // As long as a real session token: the relay line is then longer than the HTTP/2 preface an old gateway reads.
    private const string Token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudC0xIn0.c2lnbmF0dXJlLW9mLWEtdGVzdC10b2tlbg";

    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task ARelayedConnectionCarriesExactlyTheCallersBytesAfterTheAnswer()
    {
        await using var gateway = new FakeRelayGateway(output) { AfterAnswer = "first-agent-bytes"u8.ToArray() };
        var wrapped = 0;
        // jbazel's read-ahead under the handshake: one socket read may hold the answer and the bytes after it.
        var relay = new RelayClient(gateway.Address, "route-1", Token, NewFallbacks(out _), inner =>
        {
            wrapped++;
            return new ReadAheadStream(inner);
        });

        await using var stream = await relay.ConnectAsync(CancellationToken.None).AsTask().WaitAsync(s_timeout);

        Assert.Equal("first-agent-bytes", await ReadAsciiAsync(stream, "first-agent-bytes".Length));
        var payload = new byte[100_000];
        Random.Shared.NextBytes(payload);
        await stream.WriteAsync(payload);
        var echoed = new byte[payload.Length];
        await stream.ReadExactlyAsync(echoed).AsTask().WaitAsync(s_timeout);
        // The echo is what the gateway received after the request line: nothing of the handshake, nothing lost.
        Assert.Equal(payload, echoed);
        Assert.Equal(1, wrapped);
        Assert.Equal(["route-1", Token], Assert.Single(gateway.RelayRequests));
        Assert.True(relay.LastOutcome?.Relayed);
        Assert.Null(relay.RememberedRefusal);
    }

    [Fact]
    public async Task ARefusedRelayFallsBackToAPlainConnectionAndIsRememberedUntilItsPeriodEnds()
    {
        await using var agent = await StartAgentAsync();
        await using var gateway = new FakeRelayGateway(output, Endpoint(agent.Address)) { Answer = FakeRelayAnswer.Refuse };
        var fallbacks = NewFallbacks(out var time);

        var (status, relay) = await GetStatusAsync(gateway.Address, fallbacks);
        Assert.Equal(FakeRemote.AgentId, status.AgentId);
        Assert.Single(gateway.RelayRequests);
        Assert.Equal(1, gateway.PlainConnections);
        // The second connection carries no relay request: the HTTP/2 preface is its first line.
        Assert.Equal("PRI * HTTP/2.0", gateway.FirstLines.ElementAt(1));
        Assert.False(relay.LastOutcome!.Relayed);
        Assert.Contains("503 no tunnel for the route", relay.LastOutcome.Detail, StringComparison.Ordinal);

        // A new channel (another connection to the same gateway and route) skips the handshake: its calls go plain
        // without a relay connection being tried, and a relay connection asked for directly is refused on the spot.
        (status, relay) = await GetStatusAsync(gateway.Address, fallbacks);
        Assert.Equal(FakeRemote.AgentId, status.AgentId);
        Assert.Single(gateway.RelayRequests);
        Assert.Equal(2, gateway.PlainConnections);
        Assert.Null(relay.LastOutcome);
        Assert.Contains("503 no tunnel for the route", relay.RememberedRefusal, StringComparison.Ordinal);
        var remembered = await Assert.ThrowsAsync<RelayRefusedException>(() => relay.ConnectAsync(CancellationToken.None).AsTask());
        Assert.Contains("not relayed for 30 s", remembered.Message, StringComparison.Ordinal);
        Assert.Equal(3, gateway.FirstLines.Count);

        // Once the period is over the relay is tried again, and now the gateway relays.
        time.Advance(RelayFallbacks.DefaultPeriod + TimeSpan.FromSeconds(1));
        gateway.Answer = FakeRelayAnswer.Relay;
        (status, relay) = await GetStatusAsync(gateway.Address, fallbacks);
        Assert.Equal(FakeRemote.AgentId, status.AgentId);
        Assert.Equal(2, gateway.RelayRequests.Count);
        Assert.Equal(2, gateway.PlainConnections);
        Assert.True(relay.LastOutcome!.Relayed);
    }

    [Fact]
    public async Task CallsThatWaitedTogetherForARefusedRelayAllGoPlain()
    {
        await using var agent = await StartAgentAsync();
        await using var gateway = new FakeRelayGateway(output, Endpoint(agent.Address)) { Answer = FakeRelayAnswer.Refuse };
        var relay = new RelayClient(gateway.Address, "route-1", Token, NewFallbacks(out _));
        using var channel = NewChannel(gateway.Address, relay);
        var client = new V1.Agent.AgentClient(channel);

        // All queue for the first connection; its refusal reaches each of them, and none may fail for it.
        var statuses = await Task.WhenAll(Enumerable.Range(0, 20).Select(_ =>
            client.GetStatusAsync(new GetStatusRequest(), deadline: DateTime.UtcNow + s_timeout).ResponseAsync));

        Assert.All(statuses, status => Assert.Equal(FakeRemote.AgentId, status.AgentId));
        Assert.Single(gateway.RelayRequests);
        Assert.True(gateway.PlainConnections >= 1);
    }

    [Fact]
    public async Task AGatewayThatClosesAtOnceGetsAPlainConnection()
    {
        await using var agent = await StartAgentAsync();
        await using var gateway = new FakeRelayGateway(output, Endpoint(agent.Address)) { Answer = FakeRelayAnswer.Close };
        var fallbacks = NewFallbacks(out _);

        var (status, relay) = await GetStatusAsync(gateway.Address, fallbacks);

        Assert.Equal(FakeRemote.AgentId, status.AgentId);
        Assert.Equal(1, gateway.PlainConnections);
        Assert.False(relay.LastOutcome!.Relayed);
        Assert.Contains("no relay answer", relay.LastOutcome.Detail, StringComparison.Ordinal);
        Assert.NotNull(relay.RememberedRefusal);
    }

    [Fact]
    public async Task AGatewayThatNeverAnswersIsARefusalOnceTheHandshakeTimeoutPasses()
    {
        await using var gateway = new FakeRelayGateway(output) { Answer = FakeRelayAnswer.Silent };
        var time = new FakeTimeProvider();
        var relay = new RelayClient(gateway.Address, "route-1", Token, new RelayFallbacks(time, RelayFallbacks.DefaultPeriod), time: time);

        var connecting = relay.ConnectAsync(CancellationToken.None).AsTask();
        await TestWait.EventuallyAsync(() => !gateway.RelayRequests.IsEmpty, "the relay request at the gateway");
        Assert.False(connecting.IsCompleted);
        time.Advance(relay.HandshakeTimeout);

        var refused = await Assert.ThrowsAsync<RelayRefusedException>(() => connecting.WaitAsync(s_timeout));
        Assert.Contains("within 10 s", refused.Message, StringComparison.Ordinal);
        Assert.NotNull(relay.RememberedRefusal);
    }

    [Fact]
    public async Task AnUnreachableGatewayIsAConnectionErrorNotARememberedRefusal()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        var relay = new RelayClient(new Uri($"http://127.0.0.1:{port}"), "route-1", Token, NewFallbacks(out _));

        await Assert.ThrowsAsync<SocketException>(() => relay.ConnectAsync(CancellationToken.None).AsTask().WaitAsync(s_timeout));
        Assert.Null(relay.RememberedRefusal);
        Assert.Null(relay.LastOutcome);
    }

    [Theory]
    [InlineData("https://gw.example.com", "http://gw.example.com:443/")]
    [InlineData("https://gw.example.com:8443/", "http://gw.example.com:8443/")]
    [InlineData("http://127.0.0.1:8080", "http://127.0.0.1:8080/")]
    public void TheHandlerSeesTheGatewaysHostAndPortWithTheHttpScheme(string gateway, string expected)
    {
        // http: SocketsHttpHandler must speak prior-knowledge HTTP/2 on the stream RelayClient made, TLS or not.
        Assert.Equal(expected, RelayClient.RelayAddress(new Uri(gateway)).ToString());
    }

    [Theory]
    [InlineData("route-1", Token, true)]
    [InlineData("", Token, false)]
    [InlineData("route-1", "", false)]
    [InlineData("route 1", Token, false)]
    public void OnlyARouteAndTokenTheRequestLineCanCarryAreRelayed(string route, string token, bool relayable) =>
        Assert.Equal(relayable, RelayClient.CanCarry(route, token));

    private static RelayFallbacks NewFallbacks(out FakeTimeProvider time)
    {
        time = new FakeTimeProvider();
        return new RelayFallbacks(time, RelayFallbacks.DefaultPeriod);
    }

    private static IPEndPoint Endpoint(Uri address) => new(IPAddress.Loopback, address.Port);

    private static async Task<string> ReadAsciiAsync(Stream stream, int length)
    {
        var buffer = new byte[length];
        await stream.ReadExactlyAsync(buffer).AsTask().WaitAsync(s_timeout);
        return Encoding.ASCII.GetString(buffer);
    }

    private async Task<FakeRemote> StartAgentAsync()
    {
        var agent = await FakeRemote.StartAsync(output);
        agent.StatusAgentId = FakeRemote.AgentId;
        return agent;
    }

    private static GrpcChannel NewChannel(Uri gateway, RelayClient relay) =>
        GrpcChannel.ForAddress(gateway, new GrpcChannelOptions
        {
            HttpHandler = new RelayHttpHandler(relay, ChannelPool.NewHandler(), new HttpMessageInvoker(ChannelPool.NewHandler(), disposeHandler: true)),
            DisposeHttpClient = true,
        });

    /// <summary>One GetStatus on a new relay channel as jbazel builds one (its handler settings, a plain handler for the fallback).</summary>
    private static async Task<(AgentStatus Status, RelayClient Relay)> GetStatusAsync(Uri gateway, RelayFallbacks fallbacks)
    {
        var relay = new RelayClient(gateway, "route-1", Token, fallbacks, inner => new ReadAheadStream(inner));
        using var channel = NewChannel(gateway, relay);
        var headers = new Metadata { { "rbs-agent-route", "route-1" }, { "authorization", $"Bearer {Token}" } };
        var status = await new V1.Agent.AgentClient(channel).GetStatusAsync(new GetStatusRequest(), headers, deadline: DateTime.UtcNow + s_timeout);
        return (status, relay);
    }
}
