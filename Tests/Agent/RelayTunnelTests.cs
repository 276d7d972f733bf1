using System.Buffers;
using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Threading.Channels;
using Google.Protobuf;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Rbs.Agent.Tunnel;
using Rbs.Shared.Protocol;
using Rbs.Shared.Tunnel;
using Rbs.Tests.Infrastructure;
using Rbs.V1;

namespace Rbs.Tests.Agent;

/// <summary>
/// The agent's side of relay tunnels: a real agent (fake-bazel as its build tool) in tunnel mode against
/// <see cref="FakeRelayGateway"/>, whose WebSocket endpoint announces a relay port on the 101 and whose relay endpoint is
/// a real TCP listener speaking <see cref="RelayProtocol"/> (the real gateway's relay side is written elsewhere).
/// </summary>
public sealed class RelayTunnelTests(ITestOutputHelper output)
{
    private const string InitialToken = "join-token-from-the-orchestrator";

    /// <summary>Relay spares per replica by default (Agent:Tunnel:RelaySpareConnections).</summary>
    private const int RelaySpares = 4;

    /// <summary>WebSocket spares by default (Agent:Tunnel:SpareConnections).</summary>
    private const int WebSocketSpares = 2;

    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task AfterGoTheRelayTunnelServesTheClientsHttp2AndIsReplaced()
    {
        await using var gateway = await FakeRelayGateway.StartAsync(output, _ => (RelayProtocol.Ok, TestAgent.AgentId));
        await using var agent = await StartAgentAsync(gateway);
        var status = agent.App.Services.GetRequiredService<AgentTunnelStatus>();

        var parked = await ReadParkedAsync(gateway, RelaySpares);
        // Dialled with the token the 101 renewed, not the orchestrator's (which the WebSocket dial used first).
        Assert.All(parked, p => Assert.Equal(FakeRelayGateway.RenewedToken, p.Token));
        Assert.Contains("Bearer " + InitialToken, gateway.WebSocketAuthorizations);
        await TestWait.EventuallyAsync(() => status.OpenTunnels == WebSocketSpares + RelaySpares, "WebSocket and relay spares counted open", s_timeout);

        var tunnel = parked[0];
        await tunnel.GoAsync();

        // The client's own HTTP/2 connection (prior knowledge) on that very socket, as the gateway would splice it.
        using var channel = tunnel.Channel();
        var client = new V1.Agent.AgentClient(channel);
        using var cts = new CancellationTokenSource(s_timeout);
        var agentStatus = await client.GetStatusAsync(new GetStatusRequest(), cancellationToken: cts.Token);
        Assert.Equal(TestAgent.AgentId, agentStatus.AgentId);

        // A command on it counts as a request in flight, as on any tunnel (graceful stop and idle exit wait for it).
        using (var call = client.ExecuteCommand(cancellationToken: cts.Token))
        {
            await call.RequestStream.WriteAsync(new ClientFrame { Start = new StartCommand { InvocationId = Guid.NewGuid().ToString(), Args = { "cat" } } }, cts.Token);
            await call.RequestStream.WriteAsync(new ClientFrame { Stdin = ByteString.CopyFromUtf8("over the relay\n") }, cts.Token);
            await TestWait.EventuallyAsync(() => status.ActiveRequests == 1, "the command counted in flight", s_timeout);
            await call.RequestStream.WriteAsync(new ClientFrame { StdinEof = new StdinEof() }, cts.Token);
            var result = await CommandResult.ReadToEndAsync(call, cts.Token).WaitAsync(s_timeout);
            Assert.Equal("over the relay\n", result.StdoutText);
            Assert.Equal(0, result.Exit?.Code);
        }

        await TestWait.EventuallyAsync(() => status.ActiveRequests == 0, "no request in flight after the command", s_timeout);

        // The tunnel that went into use was replaced by a fresh parked one.
        var replacement = (await ReadParkedAsync(gateway, 1)).Single();
        Assert.Equal(FakeRelayGateway.RenewedToken, replacement.Token);
        Assert.True(agent.Logs.Count(319) >= 1, "the agent logged the relay tunnel going into use");
        await TestWait.EventuallyAsync(() => status.OpenTunnels == WebSocketSpares + RelaySpares + 1, "the tunnel in use counted open beside the spares", s_timeout);

        // The client closes its connection: Kestrel ends it and the tunnel no longer counts as open.
        channel.Dispose();
        await TestWait.EventuallyAsync(() => status.OpenTunnels == WebSocketSpares + RelaySpares, "the closed relay connection no longer counted", s_timeout);
        Assert.Empty(gateway.ProtocolErrors);
    }

    [Fact]
    public async Task RefusedRelayHandshakesAreRetriedAndNeverStopTheAgent()
    {
        const int Refusals = 3;
        await using var gateway = await FakeRelayGateway.StartAsync(output, attempt => attempt <= Refusals
            ? (401, "join token refused")
            : (RelayProtocol.Ok, TestAgent.AgentId));
        await using var agent = await StartAgentAsync(gateway);
        var status = agent.App.Services.GetRequiredService<AgentTunnelStatus>();

        // Every loop ends up parked: those refused dialled again.
        await ReadParkedAsync(gateway, RelaySpares);
        Assert.Equal(RelaySpares + Refusals, gateway.Handshakes);
        Assert.Equal(Refusals, agent.Logs.Count(321));
        Assert.False(status.Rejected.IsCompleted, "a relay refusal must not count as the gateway refusing the credentials");
        Assert.False(status.DialLoopsEnded.IsCompleted, "the agent stopped dialling after a relay refusal");
        await TestWait.EventuallyAsync(() => status.OpenTunnels == WebSocketSpares + RelaySpares, "WebSocket and relay spares open", s_timeout);
        Assert.Empty(gateway.ProtocolErrors);
    }

    [Fact]
    public async Task AbortAllCutsParkedAndInUseRelayTunnelsAndTheAgentRedials()
    {
        await using var gateway = await FakeRelayGateway.StartAsync(output, _ => (RelayProtocol.Ok, TestAgent.AgentId));
        await using var agent = await StartAgentAsync(gateway);
        var status = agent.App.Services.GetRequiredService<AgentTunnelStatus>();
        var parked = await ReadParkedAsync(gateway, RelaySpares);
        var inUse = parked[0];
        await inUse.GoAsync();
        var replacement = (await ReadParkedAsync(gateway, 1)).Single();
        await TestWait.EventuallyAsync(() => status.OpenTunnels == WebSocketSpares + RelaySpares + 1, "spares and the tunnel in use open", s_timeout);

        status.AbortAllTunnels();

        foreach (var tunnel in (FakeRelayGateway.ParkedTunnel[])[.. parked, replacement])
        {
            await tunnel.WaitForCutAsync(s_timeout);
        }

        // The loops dial again and park fresh tunnels; the cut ones no longer count.
        await ReadParkedAsync(gateway, RelaySpares);
        await TestWait.EventuallyAsync(() => status.OpenTunnels == WebSocketSpares + RelaySpares, "only the redialled spares open", s_timeout);
        Assert.Empty(gateway.ProtocolErrors);
    }

    private Task<TestAgent> StartAgentAsync(FakeRelayGateway gateway) =>
        TestAgent.StartAsync(output, "--gateway", gateway.AgentAddress, "--join-token", InitialToken);

    private static async Task<FakeRelayGateway.ParkedTunnel[]> ReadParkedAsync(FakeRelayGateway gateway, int count)
    {
        var parked = new FakeRelayGateway.ParkedTunnel[count];
        for (var i = 0; i < count; i++)
        {
            parked[i] = await gateway.Parked.Reader.ReadAsync().AsTask().WaitAsync(s_timeout);
        }

        return parked;
    }
}

/// <summary>
/// A fake of the gateway's two agent-facing endpoints, named as such: real Kestrel for the WebSocket tunnel endpoint
/// (it holds tunnels open, answers pings, renews the token to <see cref="RenewedToken"/> and announces the relay port
/// on the 101) and a real TCP listener for the relay endpoint, answering each tunnel handshake as the test says.
/// </summary>
internal sealed class FakeRelayGateway : IAsyncDisposable
{
    public const string RenewedToken = "renewed-join-token";

    private readonly WebApplication _app;
    private readonly TcpListener _relay;
    private readonly Func<int, (int Status, string Reason)> _answer;
    private readonly ITestOutputHelper _output;
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentBag<Socket> _sockets = [];
    private readonly Task _acceptLoop;
    private int _handshakes;

    private FakeRelayGateway(WebApplication app, TcpListener relay, Func<int, (int, string)> answer, ITestOutputHelper output)
    {
        _app = app;
        _relay = relay;
        _answer = answer;
        _output = output;
        _acceptLoop = Task.Run(AcceptLoopAsync);
    }

    /// <summary>The agent endpoint, e.g. <c>http://127.0.0.1:PORT</c> (the agent's <c>--gateway</c>).</summary>
    public string AgentAddress => _app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single();

    public int RelayPort => ((IPEndPoint)_relay.LocalEndpoint).Port;

    /// <summary>Tunnels answered 200, in the order they parked.</summary>
    public Channel<ParkedTunnel> Parked { get; } = Channel.CreateUnbounded<ParkedTunnel>();

    /// <summary>Relay handshakes received (answered whatever way).</summary>
    public int Handshakes => Volatile.Read(ref _handshakes);

    /// <summary>The Authorization header of every WebSocket tunnel dial.</summary>
    public ConcurrentQueue<string> WebSocketAuthorizations { get; } = new();

    /// <summary>Relay connections that did not speak the protocol.</summary>
    public ConcurrentQueue<string> ProtocolErrors { get; } = new();

    /// <param name="answer">Status and reason for the n-th relay handshake (1-based).</param>
    public static async Task<FakeRelayGateway> StartAsync(ITestOutputHelper output, Func<int, (int Status, string Reason)> answer)
    {
        var relay = new TcpListener(IPAddress.Loopback, 0);
        relay.Start();
        var relayPort = ((IPEndPoint)relay.LocalEndpoint).Port;
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { EnvironmentName = "Production" });
        builder.Logging.ClearProviders().AddProvider(new TestOutputLoggerProvider(output, "fake gateway"));
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.Listen(IPAddress.Loopback, 0));
        builder.WebHost.UseShutdownTimeout(TimeSpan.FromSeconds(2));
        var app = builder.Build();
        FakeRelayGateway? gateway = null;
        app.UseWebSockets();
        app.Map("/tunnel/v1/connect", (HttpContext context) => gateway!.TunnelAsync(context, relayPort));
        await app.StartAsync().WaitAsync(TimeSpan.FromSeconds(30));
        gateway = new FakeRelayGateway(app, relay, answer, output);
        TestLog.Write(output, $"fake gateway: agents {gateway.AgentAddress}, relay port {relayPort}");
        return gateway;
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _relay.Stop();
        await _acceptLoop;
        foreach (var socket in _sockets)
        {
            socket.Dispose();
        }

        using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5)))
        {
            await _app.StopAsync(cts.Token);
        }

        await _app.DisposeAsync();
        _stop.Dispose();
    }

    /// <summary>A WebSocket tunnel: renewed token and relay port on the 101, then held open until either side closes.</summary>
    private async Task TunnelAsync(HttpContext context, int relayPort)
    {
        if (!context.WebSockets.IsWebSocketRequest)
        {
            context.Response.StatusCode = StatusCodes.Status400BadRequest;
            return;
        }

        WebSocketAuthorizations.Enqueue(context.Request.Headers.Authorization.ToString());
        context.Response.Headers[RbsHeaders.RenewedJoinToken] = RenewedToken;
        context.Response.Headers[RbsHeaders.GatewayRelayPort] = relayPort.ToString(CultureInfo.InvariantCulture);
        using var webSocket = await context.WebSockets.AcceptWebSocketAsync();
        var buffer = new byte[16 * 1024];
        try
        {
            // A pending receive also answers the agent's pings.
            while (true)
            {
                var received = await webSocket.ReceiveAsync(buffer, context.RequestAborted);
                if (received.MessageType == WebSocketMessageType.Close)
                {
                    await webSocket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, null, CancellationToken.None);
                    return;
                }
            }
        }
        catch (Exception ex) when (ex is WebSocketException or OperationCanceledException or IOException)
        {
            // The agent went away.
        }
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await _relay.AcceptSocketAsync(_stop.Token);
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }

            _sockets.Add(socket);
            _ = Task.Run(() => HandshakeAsync(socket));
        }
    }

    /// <summary>Reads the tunnel's <c>RBS-TUNNEL/1 token</c> line and answers it; a 200 parks the tunnel for the test.</summary>
    private async Task HandshakeAsync(Socket socket)
    {
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            timeout.CancelAfter(TimeSpan.FromSeconds(30));
            var line = new List<byte>();
            var one = new byte[1];
            while (line.Count == 0 || line[^1] != (byte)'\n')
            {
                if (await socket.ReceiveAsync(one, timeout.Token) == 0)
                {
                    ProtocolErrors.Enqueue("a relay connection closed before its handshake line");
                    socket.Dispose();
                    return;
                }

                line.Add(one[0]);
            }

            if (!RelayProtocol.TryReadLine(new ReadOnlySequence<byte>([.. line]), RelayProtocol.TunnelMagic, out var fields, out _) || fields.Length != 1)
            {
                ProtocolErrors.Enqueue($"not a tunnel handshake: {System.Text.Encoding.ASCII.GetString([.. line])}");
                socket.Dispose();
                return;
            }

            var (status, reason) = _answer(Interlocked.Increment(ref _handshakes));
            TestLog.Write(_output, $"[fake gateway] relay handshake with token {fields[0]}: answering {status} {reason}");
            await socket.SendAsync(RelayProtocol.Reply(RelayProtocol.TunnelMagic, status, reason), timeout.Token);
            if (status == RelayProtocol.Ok)
            {
                Parked.Writer.TryWrite(new ParkedTunnel(socket, fields[0]));
            }
            else
            {
                socket.Shutdown(SocketShutdown.Both);
                socket.Dispose();
            }
        }
        catch (Exception ex) when (ex is InvalidDataException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            ProtocolErrors.Enqueue($"relay handshake failed: {ex.Message}");
            socket.Dispose();
        }
    }

    /// <summary>A tunnel the fake answered 200 to: parked until the test sends Go.</summary>
    internal sealed class ParkedTunnel(Socket socket, string token)
    {
        private int _connected;

        public Socket Socket => socket;

        /// <summary>The join token of the handshake.</summary>
        public string Token => token;

        /// <summary>Takes the tunnel as the gateway would for a client: Go, then the agent's Ready.</summary>
        public async Task GoAsync()
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await socket.SendAsync(new[] { RelayProtocol.Go }, timeout.Token);
            var answer = new byte[1];
            Assert.Equal(1, await socket.ReceiveAsync(answer, timeout.Token));
            Assert.Equal(RelayProtocol.Ready, answer[0]);
        }

        /// <summary>A gRPC channel whose only connection is this tunnel: HTTP/2 with prior knowledge, as a relayed client speaks it.</summary>
        public GrpcChannel Channel() => GrpcChannel.ForAddress("http://relay.test", new GrpcChannelOptions
        {
            HttpHandler = new SocketsHttpHandler
            {
                ConnectCallback = (_, _) => Interlocked.Exchange(ref _connected, 1) == 0
                    ? ValueTask.FromResult<Stream>(new NetworkStream(socket, ownsSocket: true))
                    : throw new InvalidOperationException("the relay tunnel carries one connection; the client asked for a second"),
            },
            HttpVersion = HttpVersion.Version20,
            HttpVersionPolicy = HttpVersionPolicy.RequestVersionExact,
            // Disposing the channel closes the connection (the handler's pool), as a client that goes away does.
            DisposeHttpClient = true,
        });

        /// <summary>Until the agent's side of the connection is gone (reset, or closed after whatever it still sent).</summary>
        public async Task WaitForCutAsync(TimeSpan timeout)
        {
            using var cts = new CancellationTokenSource(timeout);
            var buffer = new byte[16 * 1024];
            try
            {
                while (await socket.ReceiveAsync(buffer, cts.Token) > 0)
                {
                }
            }
            catch (SocketException)
            {
                // Reset: cut as a network failure would.
            }
        }
    }
}
