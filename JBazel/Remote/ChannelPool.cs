using System.Net.Http;
using Grpc.Net.Client;

namespace Rbs.JBazel.Remote;

/// <summary>
/// gRPC channels by address for one jbazel run. In tunnel mode the orchestrator and the agent share the
/// gateway's address, so the second call reuses the first call's HTTP/2 connection.
/// </summary>
internal sealed class ChannelPool : IDisposable
{
    /// <summary>HTTP/2 receive window per stream: 4 MiB, or the process's cap when that is lower.</summary>
    public const int StreamWindowSize = 4 * 1024 * 1024;

    // .NET's process-wide cap of a stream window; a handler asking for more throws. Someone may have set it (a gateway
    // in the same test process sets it for itself, and children inherit it): then jbazel stays under it.
    // HTTP/2's initial window, the smallest a handler accepts.
    private const int DefaultStreamWindow = 65_535;

    private const string MaxStreamWindowVariable = "DOTNET_SYSTEM_NET_HTTP_SOCKETSHTTPHANDLER_FLOWCONTROL_MAXSTREAMWINDOWSIZE";

    private readonly Dictionary<string, GrpcChannel> _channels = new(StringComparer.Ordinal);

    public GrpcChannel Get(Uri address)
    {
        var key = address.GetLeftPart(UriPartial.Authority);
        lock (_channels)
        {
            if (!_channels.TryGetValue(key, out var channel))
            {
                channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions
                {
                    HttpHandler = new SocketsHttpHandler
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
                    },
                    DisposeHttpClient = true,
                    // Output arrives in chunks the agent chooses; do not cap it at gRPC's 4 MB default.
                    MaxReceiveMessageSize = 64 * 1024 * 1024,
                    // ExecuteCommand is not idempotent: never retried (no service config, no retry policy).
                    MaxRetryAttempts = 0,
                });
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
        }
    }

    /// <summary><see cref="StreamWindowSize"/>, lowered to a valid cap from <paramref name="cap"/> (the environment's).</summary>
    internal static int WindowSize(string? cap) =>
        int.TryParse(cap, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var value) && value >= DefaultStreamWindow
            ? Math.Min(value, StreamWindowSize)
            : StreamWindowSize;
}
