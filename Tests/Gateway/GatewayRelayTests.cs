using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Microsoft.Extensions.DependencyInjection;
using Rbs.Gateway.Relay;
using Rbs.Shared.Tunnel;
using Rbs.Tests.Infrastructure;

namespace Rbs.Tests.Gateway;

/// <summary>
/// The gateway's relay at the byte level, with a stand-in agent that speaks the relay protocol on real sockets
/// (Shared/Tunnel/RelayProtocol.cs): a parked tunnel is taken with the go signal, the client's and the agent's bytes pass
/// both ways unchanged after the answer line, and every refusal is a status line the client can fall back on: a bad or
/// foreign session token, no parked tunnel, a malformed request, a parked tunnel that died. A plain HTTP/2 client on the
/// same public endpoint is not touched by the relay.
/// </summary>
[Collection(TunnelCollection.Name)]
public sealed class GatewayRelayTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly TunnelTestEnvironment _env = new(output);

    public Task InitializeAsync() => Task.CompletedTask;

    public Task DisposeAsync() => _env.StopAllAsync();

    [Fact]
    public async Task AParkedTunnelCarriesTheClientsBytesBothWaysUnchanged()
    {
        var gateway = await StartGatewayAsync();
        await using var agent = await ParkAsync(gateway, "agent-relay");

        await using var client = await ConnectAsync(gateway.PublicAddress);
        await client.Stream.WriteAsync(RelayProtocol.Line(RelayProtocol.ClientMagic, "agent-relay", _env.SessionToken("agent-relay")));
        var go = new byte[1];
        await agent.Stream.ReadExactlyAsync(go).AsTask().WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal(RelayProtocol.Go, go[0]);
        await agent.Stream.WriteAsync(new[] { RelayProtocol.Ready });
        var (status, _) = await RelayProtocol.ReadReplyAsync(client.Stream, RelayProtocol.ClientMagic.ToArray(), CancellationToken.None).WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal(200, status);

        // 8 MiB each way at once, random bytes: both directions arrive whole and in order.
        var up = RandomNumberGenerator.GetBytes(8 * 1024 * 1024);
        var down = RandomNumberGenerator.GetBytes(8 * 1024 * 1024 + 17);
        var received = await Task.WhenAll(
            Exchange(client.Stream, up, down.Length),
            Exchange(agent.Stream, down, up.Length)).WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal(SHA256.HashData(down), SHA256.HashData(received[0]));
        Assert.Equal(SHA256.HashData(up), SHA256.HashData(received[1]));
        Assert.Equal(1, gateway.App.Services.GetRequiredService<ClientRelay>().ActiveConnections);

        // The agent closes: the client sees the end of its connection, and the relay is gone.
        agent.Socket.Shutdown(SocketShutdown.Send);
        Assert.Equal(0, await client.Stream.ReadAsync(new byte[1]).AsTask().WaitAsync(TunnelTestEnvironment.Timeout));
        await TestWait.EventuallyAsync(() => gateway.App.Services.GetRequiredService<ClientRelay>().ActiveConnections == 0, "the relay ends with its agent side");
    }

    [Fact]
    public async Task RefusalsAreStatusLinesAndLeaveTheParkedTunnelForTheRightClient()
    {
        var gateway = await StartGatewayAsync();
        await using var agent = await ParkAsync(gateway, "agent-a");

        Assert.Equal(401, (await RequestAsync(gateway, "agent-a", "not-a-token")).Status);
        var foreign = await RequestAsync(gateway, "agent-a", _env.SessionToken("agent-b"));
        Assert.Equal(403, foreign.Status);
        Assert.Contains("does not grant access to agent agent-a", foreign.Reason, StringComparison.Ordinal);
        var none = await RequestAsync(gateway, "agent-b", _env.SessionToken("agent-b"));
        Assert.Equal(503, none.Status);
        Assert.Contains("no relay tunnel", none.Reason, StringComparison.Ordinal);
        Assert.Equal(400, (await RequestAsync(gateway, "agent-a", _env.SessionToken("agent-a") + " extra")).Status);

        // None of that took agent-a's tunnel.
        Assert.Equal(1, gateway.App.Services.GetRequiredService<RelayTunnelPool>().Parked);
        Assert.Equal(0, agent.Socket.Available);
    }

    [Fact]
    public async Task AParkedTunnelThatClosedIsDroppedAndAJoinTokenIsRequired()
    {
        var gateway = await StartGatewayAsync();
        var pool = gateway.App.Services.GetRequiredService<RelayTunnelPool>();
        var agent = await ParkAsync(gateway, "agent-gone");
        Assert.Equal(1, pool.Parked);
        await agent.DisposeAsync();
        await TestWait.EventuallyAsync(() => pool.Parked == 0, "a closed parked tunnel leaves the pool");
        Assert.Equal(503, (await RequestAsync(gateway, "agent-gone", _env.SessionToken("agent-gone"))).Status);

        // A session token is not a join token.
        await using var impostor = await ConnectAsync(RelayAddress(gateway));
        await impostor.Stream.WriteAsync(RelayProtocol.Line(RelayProtocol.TunnelMagic, _env.SessionToken("agent-gone")));
        var (status, reason) = await RelayProtocol.ReadReplyAsync(impostor.Stream, RelayProtocol.TunnelMagic.ToArray(), CancellationToken.None).WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal(401, status);
        Assert.Contains("join token rejected", reason, StringComparison.Ordinal);
        Assert.Equal(0, pool.Parked);
    }

    [Fact]
    public async Task APlainHttp2ClientOnThePublicEndpointIsNotTouchedByTheRelay()
    {
        var gateway = await StartGatewayAsync();
        await _env.StartAgentAsync("agent-plain", gateway.AgentAddress, _env.JoinToken("agent-plain"));
        await gateway.WaitRegisteredAsync("agent-plain");
        var client = new V1.Agent.AgentClient(_env.Channel(gateway.PublicAddress));
        var result = await TunnelTestEnvironment.RunBytesAsync(client, TunnelTestEnvironment.Route("agent-plain", _env.SessionToken("agent-plain")), 100_000, seed: 5)
            .WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal(DeterministicBytes.ExpectedSha256(100_000, 5), result.Sha256);
        Assert.Equal(0, gateway.App.Services.GetRequiredService<ClientRelay>().ActiveConnections);
    }

    [Fact]
    public async Task AClientRelayedToARealAgentGetsItsBytesAndARefusedOneTheSameStatusAsBefore()
    {
        var gateway = await StartGatewayAsync();
        await _env.StartAgentAsync("agent-real", gateway.AgentAddress, _env.JoinToken("agent-real"));
        await gateway.WaitRegisteredAsync("agent-real");
        var pool = gateway.App.Services.GetRequiredService<RelayTunnelPool>();
        await TestWait.EventuallyAsync(() => pool.Parked > 0, "the agent parks relay tunnels at the port its 101 announced");

        // Relayed: the whole connection goes to the agent; 5 MB arrive binary-exact with the exit code.
        var token = _env.SessionToken("agent-real");
        var (relayed, relay) = RelayChannel(gateway.PublicAddress, "agent-real", token);
        var result = await TunnelTestEnvironment.RunBytesAsync(new V1.Agent.AgentClient(relayed), TunnelTestEnvironment.Route("agent-real", token), 5_000_000, seed: 7, exitCode: 4)
            .WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal(DeterministicBytes.ExpectedSha256(5_000_000, 7), result.Sha256);
        Assert.Equal(4, result.ExitCode);
        Assert.True(relay.LastOutcome?.Relayed, relay.LastOutcome?.Detail);
        Assert.Equal(0, gateway.App.Services.GetRequiredService<Rbs.Gateway.Tunnel.AgentStreamForwarder>().ActiveStreams);

        // Another agent's token: the relay refuses (403), the client falls back to a plain connection, and the stream
        // gets the per-stream path's PermissionDenied, as a client without the relay does.
        var foreign = _env.SessionToken("agent-other");
        var (plain, refused) = RelayChannel(gateway.PublicAddress, "agent-real", foreign);
        var error = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() =>
            TunnelTestEnvironment.RunBytesAsync(new V1.Agent.AgentClient(plain), TunnelTestEnvironment.Route("agent-real", foreign), 1000, seed: 1).WaitAsync(TunnelTestEnvironment.Timeout));
        Assert.Equal(Grpc.Core.StatusCode.PermissionDenied, error.StatusCode);
        Assert.False(refused.LastOutcome?.Relayed);
        Assert.Contains("403", refused.LastOutcome?.Detail, StringComparison.Ordinal);
    }

    /// <summary>A channel as jbazel's tunnel-mode agent channel: relayed, falling back to a plain connection.</summary>
    private (Grpc.Net.Client.GrpcChannel Channel, RelayClient Relay) RelayChannel(string gateway, string route, string token)
    {
        var relay = new RelayClient(new Uri(gateway), route, token, new RelayFallbacks(TimeProvider.System, RelayFallbacks.DefaultPeriod));
        var handler = new RelayHttpHandler(relay, new SocketsHttpHandler(), new HttpMessageInvoker(new SocketsHttpHandler()));
        var channel = Grpc.Net.Client.GrpcChannel.ForAddress(gateway, new Grpc.Net.Client.GrpcChannelOptions { HttpHandler = handler, MaxReceiveMessageSize = 8 * 1024 * 1024 });
        _env.Track(new AsyncDisposableChannel(channel));
        return (channel, relay);
    }

    private sealed class AsyncDisposableChannel(Grpc.Net.Client.GrpcChannel channel) : IAsyncDisposable
    {
        public ValueTask DisposeAsync()
        {
            channel.Dispose();
            return ValueTask.CompletedTask;
        }
    }

    private Task<GatewayHost> StartGatewayAsync() => _env.StartGatewayAsync(settings: new Dictionary<string, string?>
    {
        ["Gateway:RelayAcquireTimeout"] = "00:00:01",
    });

    private static string RelayAddress(GatewayHost gateway) =>
        $"http://127.0.0.1:{gateway.App.Services.GetRequiredService<RelayTunnelListener>().Port}";

    /// <summary>A stand-in agent's relay tunnel, parked (answered 200) under <paramref name="agentId"/>.</summary>
    private async Task<Peer> ParkAsync(GatewayHost gateway, string agentId)
    {
        var peer = await ConnectAsync(RelayAddress(gateway));
        await peer.Stream.WriteAsync(RelayProtocol.Line(RelayProtocol.TunnelMagic, _env.JoinToken(agentId)));
        var (status, reason) = await RelayProtocol.ReadReplyAsync(peer.Stream, RelayProtocol.TunnelMagic.ToArray(), CancellationToken.None).WaitAsync(TunnelTestEnvironment.Timeout);
        Assert.Equal(200, status);
        Assert.Equal(agentId, reason);
        await TestWait.EventuallyAsync(() => gateway.App.Services.GetRequiredService<RelayTunnelPool>().Parked > 0, "the tunnel is parked");
        return peer;
    }

    private async Task<(int Status, string Reason)> RequestAsync(GatewayHost gateway, string route, string token)
    {
        await using var client = await ConnectAsync(gateway.PublicAddress);
        await client.Stream.WriteAsync(RelayProtocol.Line(RelayProtocol.ClientMagic, [.. new[] { route }.Concat(token.Split(' '))]));
        var reply = await RelayProtocol.ReadReplyAsync(client.Stream, RelayProtocol.ClientMagic.ToArray(), CancellationToken.None).WaitAsync(TunnelTestEnvironment.Timeout);
        output.WriteLine($"{route}: {reply.Status} {reply.Reason}");
        return reply;
    }

    private static async Task<Peer> ConnectAsync(string address)
    {
        var uri = new Uri(address);
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, uri.Port));
        return new Peer(socket);
    }

    /// <summary>Writes <paramref name="send"/> while reading <paramref name="expect"/> bytes.</summary>
    private static async Task<byte[]> Exchange(Stream stream, byte[] send, int expect)
    {
        var write = Task.Run(async () =>
        {
            for (var offset = 0; offset < send.Length; offset += 100_000)
            {
                await stream.WriteAsync(send.AsMemory(offset, Math.Min(100_000, send.Length - offset)));
            }
        });
        var received = new byte[expect];
        await stream.ReadExactlyAsync(received);
        await write;
        return received;
    }

    private sealed class Peer(Socket socket) : IAsyncDisposable
    {
        public Socket Socket => socket;

        public NetworkStream Stream { get; } = new(socket, ownsSocket: true);

        public ValueTask DisposeAsync() => Stream.DisposeAsync();
    }
}
