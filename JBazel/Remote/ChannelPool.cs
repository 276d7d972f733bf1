using System.Net.Http;
using Grpc.Net.Client;

namespace Rbs.JBazel.Remote;

/// <summary>
/// gRPC channels by address for one jbazel run. In tunnel mode the orchestrator and the agent share the
/// gateway's address, so the second call reuses the first call's HTTP/2 connection.
/// </summary>
internal sealed class ChannelPool : IDisposable
{
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
}
