using System.Net.Http;
using Grpc.Net.Client;
using Rbs.JBazel.Diagnostics;
using Rbs.Shared.Http;
using Rbs.Shared.Tunnel;

namespace Rbs.JBazel.Remote;

/// <summary>
/// gRPC channels for one jbazel run: one per address for the orchestrator and direct-mode agents, and in tunnel mode
/// one per (gateway, route, session token) for the agent, whose connections are relayed by the gateway to the agent's
/// own HTTP/2 server (Shared/Tunnel/RelayClient.cs). A relay the gateway refuses falls back to the gateway's plain
/// handler, the one the orchestrator calls use, so those calls share the gateway's connection as before.
/// </summary>
/// <param name="relay">Whether tunnel-mode agent calls try the relay (<c>--rbs_relay</c>, default on).</param>
internal sealed class ChannelPool(bool relay = true) : IDisposable
{
    /// <summary>HTTP/2 receive window per stream: 4 MiB, or the process's cap when that is lower.</summary>
    public const int StreamWindowSize = 4 * 1024 * 1024;

    // .NET's process-wide cap of a stream window; a handler asking for more throws. Someone may have set it (a gateway
    // in the same test process sets it for itself, and children inherit it): then jbazel stays under it.
    // HTTP/2's initial window, the smallest a handler accepts.
    private const int DefaultStreamWindow = 65_535;

    private const string MaxStreamWindowVariable = "DOTNET_SYSTEM_NET_HTTP_SOCKETSHTTPHANDLER_FLOWCONTROL_MAXSTREAMWINDOWSIZE";

    // Plain handlers by authority, shared by that address's plain channel and any relay channel's fallback; disposed last.
    private readonly Dictionary<string, SocketsHttpHandler> _handlers = new(StringComparer.Ordinal);
    private readonly Dictionary<string, GrpcChannel> _channels = new(StringComparer.Ordinal);

    /// <summary>The plain channel to <paramref name="address"/> (orchestrator, gateway, or a direct agent).</summary>
    public GrpcChannel Get(Uri address)
    {
        var key = address.GetLeftPart(UriPartial.Authority);
        lock (_channels)
        {
            if (!_channels.TryGetValue(key, out var channel))
            {
                channel = GrpcChannel.ForAddress(address, Options(PlainHandler(key)));
                _channels[key] = channel;
            }

            return channel;
        }
    }

    /// <summary>
    /// The channel for the agent calls of <paramref name="allocation"/>: relayed in tunnel mode (a route and a session
    /// token to present), else <see cref="Get"/>'s. The calls keep their metadata either way: the agent ignores it, and
    /// the gateway's per-stream forwarding (the fallback) needs it.
    /// </summary>
    public GrpcChannel ForAgent(Allocation allocation)
    {
        var route = allocation.Response.Route;
        var token = allocation.Response.SessionToken;
        // Relay only where the orchestrator says the gateway is reached as is (GetServerResponse.relay): behind an
        // HTTP/2-terminating proxy every command would first pay a relay request that proxy cannot carry.
        if (!relay || !allocation.ThroughGateway || !allocation.Response.Relay || !RelayClient.CanCarry(route, token))
        {
            return Get(allocation.AgentAddress);
        }

        var address = allocation.AgentAddress;
        var authority = address.GetLeftPart(UriPartial.Authority);
        var key = $"relay {authority} {route} {token}";
        lock (_channels)
        {
            if (!_channels.TryGetValue(key, out var channel))
            {
                var client = new RelayClient(address, route, token, RelayFallbacks.Shared, inner => new ReadAheadStream(inner))
                {
                    // jbazel's stderr is bazel's: the outcome goes to the phase trace (RBS_PHASE_TRACE) only.
                    Observer = outcome => PhaseTrace.Mark(outcome.Relayed ? "relay" : "relay-fallback"),
                };
                var handler = new RelayHttpHandler(client, NewHandler(), new HttpMessageInvoker(PlainHandler(authority), disposeHandler: false));
                channel = GrpcChannel.ForAddress(address, Options(handler, disposeHandler: true));
                _channels[key] = channel;
            }

            return channel;
        }
    }

    public void Dispose()
    {
        lock (_channels)
        {
            foreach (var channel in _channels.Values)
            {
                channel.Dispose();
            }

            _channels.Clear();
            foreach (var handler in _handlers.Values)
            {
                handler.Dispose();
            }

            _handlers.Clear();
        }
    }

    /// <summary><see cref="StreamWindowSize"/>, lowered to a valid cap from <paramref name="cap"/> (the environment's).</summary>
    internal static int WindowSize(string? cap) =>
        int.TryParse(cap, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var value) && value >= DefaultStreamWindow
            ? Math.Min(value, StreamWindowSize)
            : StreamWindowSize;

    /// <summary>
    /// The connection settings of every jbazel channel, plain or relayed. A relay channel's ConnectCallback is then
    /// <see cref="RelayClient"/>'s, which wraps its sockets in the same read-ahead; with EnableMultipleHttp2Connections
    /// each further HTTP/2 connection is a relay of its own.
    /// </summary>
    internal static SocketsHttpHandler NewHandler() => new()
    {
        // HTTP/2 pings detect a dead peer (agent host gone, NAT dropped) within ~25 s even
        // while a quiet build produces no output.
        KeepAlivePingDelay = TimeSpan.FromSeconds(15),
        KeepAlivePingTimeout = TimeSpan.FromSeconds(10),
        KeepAlivePingPolicy = HttpKeepAlivePingPolicy.Always,
        ConnectTimeout = TimeSpan.FromSeconds(15),
        EnableMultipleHttp2Connections = true,
        // The agent may send this much of a stream's output before jbazel's window update: at
        // the 64 KiB default a 1 GiB stdout waits on 16k window round trips (dynamic window scaling
        // hardly grows on a short RTT). The one stream's memory bound in jbazel.
        InitialHttp2StreamWindowSize = WindowSize(Environment.GetEnvironmentVariable(MaxStreamWindowVariable)),
        // Coalesced socket reads (ReadAheadStream): a 1 GiB stdout in ~8k receive calls instead of ~131k.
        ConnectCallback = ReadAheadStream.ConnectAsync,
    };

    private static GrpcChannelOptions Options(HttpMessageHandler handler, bool disposeHandler = false) => new()
    {
        // A stream a gateway's or agent's graceful stop left unprocessed is sent again with its bytes, not empty.
        HttpHandler = new RefusedStreamReplayHandler(handler),
        DisposeHttpClient = disposeHandler,
        // Output arrives in chunks the agent chooses; do not cap it at gRPC's 4 MB default.
        MaxReceiveMessageSize = 64 * 1024 * 1024,
        // ExecuteCommand is not idempotent: never retried (no service config, no retry policy).
        MaxRetryAttempts = 0,
    };

    /// <summary>The plain handler for <paramref name="authority"/>; callers hold the <c>_channels</c> lock.</summary>
    private SocketsHttpHandler PlainHandler(string authority)
    {
        if (!_handlers.TryGetValue(authority, out var handler))
        {
            handler = NewHandler();
            _handlers[authority] = handler;
        }

        return handler;
    }
}
